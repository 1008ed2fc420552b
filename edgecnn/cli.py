"""The `edgecnn` command line: one click group, a subcommand per job.

Bad input ends with exit code 2 and one `error: ...` line on stderr (a traceback only with
--debug); nothing already written in a run directory is lost.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
import tempfile
from pathlib import Path

import click

from edgecnn.core.console import native_output_to_log, route_python_noise
from edgecnn.core.errors import UserError

EXAMPLES = {
    "compress": "edgecnn compress recipes/quickstart.yaml --set distill.epochs=2",
    "train": "edgecnn train --model lenet --data mnist5k --epochs 3 --out teacher.pt",
    "distill": "edgecnn distill --teacher teacher.pt --student lenet_small --data mnist5k --out student.pt",
    "prune": "edgecnn prune student.pt --data mnist5k --ratio 0.3 --out pruned.pt",
    "export": "edgecnn export pruned.pt --data mnist5k --out exported/",
    "quantize": "edgecnn quantize pruned.pt --data mnist5k --out int8/",
    "bench": "edgecnn bench runs/quickstart/quantize/model.int8.tflite --data mnist5k --json",
    "deploy": "edgecnn deploy runs/quickstart --device rpi-emu",
    "compare": "edgecnn compare runs/a runs/b --max-latency-ms 2",
    "devices": "edgecnn devices",
}


def _example(name: str) -> str:
    return f"\b\nExample:\n  {EXAMPLES[name]}"


class Group(click.Group):
    """Turns UserError (and exhausted disk or memory) into `error: ...` with exit code 2."""

    def invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv
        if debug:
            return self._invoke(ctx, debug)
        route_python_noise()  # native libraries' and Python libraries' log lines go to the native log
        with native_output_to_log():
            return self._invoke(ctx, debug)

    def _invoke(self, ctx: click.Context, debug: bool):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:  # a bad option or argument: one line too, naming the command
            if debug:
                raise
            where = e.ctx.command_path if e.ctx else "edgecnn"
            click.echo(f"error: {where}: {e.format_message()} (see {where} --help)", err=True)
            sys.exit(2)
        except UserError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except MemoryError:
            if debug:
                raise
            click.echo(
                "error: out of memory; lower data.calib_samples or train batch_size, or free memory "
                "(finished stages are kept; rerun with --resume)",
                err=True,
            )
            sys.exit(2)
        except OSError as e:
            if debug:
                raise
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                click.echo(
                    f"error: {e.filename or 'disk'}: {e.strerror}; free space or choose another --out "
                    "(finished stages are kept; rerun with --resume)",
                    err=True,
                )
                sys.exit(2)
            if e.filename is None or e.errno is None:
                raise
            # a path the user gave that cannot be used (not a folder, read-only, no permission, too long)
            click.echo(f"error: {e.filename}: {e.strerror}; check the path or choose another --out", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="edgecnn")
def main(debug: bool) -> None:
    """edgecnn: distil, prune, quantize, export and benchmark a CNN for edge devices.

    \b
    Example:
      edgecnn compress recipes/quickstart.yaml
    """


def _print_table(models: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgecnn.analysis.report import HEADER, model_rows

    table = Table(*HEADER, title="edgecnn models")
    for row in model_rows(models):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


@main.command(epilog=_example("compress"))
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<recipe name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value by dotted path.")
@click.option("--resume", is_flag=True, help="Reuse finished stages of an interrupted run.")
@click.option("--force", is_flag=True, help="Rerun every stage in an existing run directory.")
@click.option("--workers", type=click.IntRange(1, 1024), help="Sweeps: variants run at once (default: sweep.workers "
              "or the machine's cores).")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS", help="Sweeps: run the variants on a Ray cluster "
              "(auto: the running one, else a local one); needs edgecnn[ray].")
def compress(recipe: Path, out: Path | None, overrides: tuple[str, ...], resume: bool, force: bool,
             workers: int | None, ray_address: str | None) -> None:
    """Run every stage of a recipe: teacher, distill, prune, export, quantize, benchmark, report.

    A recipe with a `sweep:` section runs each variant into DIR/variants/<name>/ (stages the variants
    share run once), then writes DIR/compare.md/.html/.json over them.
    """
    from edgecnn.config.recipe import load_recipe
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import open_run, run_stages
    from edgecnn.pipeline.stages import STAGES
    from edgecnn.pipeline.sweep import run_sweep, write_run_report

    if resume and force:
        raise UserError("--resume and --force: give one; --resume reuses finished stages, --force redoes them all")
    rec = load_recipe(recipe, list(overrides))
    run_dir = out or Path("runs") / rec.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: --out is a file; give a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or force):
        raise UserError(
            f"{run_dir}: run directory exists; add --resume to continue it, --force to redo it, or choose another --out"
        )
    if rec.sweep is not None:
        summary = run_sweep(rec, recipe.resolve().parent, run_dir, force=force, workers=workers,
                            ray_address=ray_address)
        _print_compare(summary["compare"])
        click.echo(f"sweep: {run_dir / 'sweep.json'}, comparison: {run_dir / 'compare.html'}")
        return
    if workers or ray_address:
        raise UserError("--workers/--ray: only for recipes with a sweep section")
    ctx = Context(rec, run_dir)
    with open_run(ctx):  # inputs checked first; then locked, and a full disk is one `error:` line
        status = run_stages(STAGES, ctx, resume=resume)
        report = write_run_report(ctx, status)
    _print_table(report["models"])
    click.echo(f"report: {run_dir / 'report.md'}")


# ---- single-stage commands -------------------------------------------------------------------------


def data_option(f):
    f = click.option(
        "--data",
        "data_spec",
        default="mnist5k",
        show_default=True,
        help="Data spec: mnist5k, imagefolder:PATH or cifar10:PATH.",
    )(f)
    f = click.option("--mean", help="Per-channel mean, comma-separated (default: from the model or data).")(f)
    f = click.option("--std", help="Per-channel std, comma-separated.")(f)
    return f


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--{name} {text!r}: expected comma-separated numbers, e.g. 0.5,0.5,0.5") from None


def _load_data(spec: str, mean: str | None, std: str | None, info=None):
    from edgecnn.data.datasets import load_data

    m = _floats(mean, "mean") or (info.mean if info and info.mean else None)
    s = _floats(std, "std") or (info.std if info and info.std else None)
    return load_data(spec, 0.1, m, s)


def _train_cfg(epochs: int, lr: float | None, batch_size: int, cls=None, **extra):
    from pydantic import ValidationError

    from edgecnn.config.recipe import TrainConfig

    cls = cls or TrainConfig
    values = {"epochs": epochs, "batch_size": batch_size, **({"lr": lr} if lr else {}), **extra}
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def train_options(f):
    f = click.option("--epochs", type=int, default=5, show_default=True)(f)
    f = click.option("--lr", type=float, help="Peak learning rate of the one-cycle schedule.")(f)
    f = click.option("--batch-size", type=int, default=128, show_default=True)(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    return f


def _load_any(path: Path):
    """An edgecnn model file (ModelInfo) or a TorchScript file (no info)."""
    from edgecnn.models.files import FORMAT_TAG, is_torchscript, load_model_file, load_torchscript

    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    if is_torchscript(path):
        return load_torchscript(path).eval(), None
    model, info = load_model_file(path)
    return model, info
    del FORMAT_TAG


def _augment(data) -> bool:
    c, h, w = data.input_shape
    return c == 3 and h == w == 32


def _kwargs(text: str | None, name: str) -> dict:
    """A YAML/JSON mapping given on the command line (constructor arguments)."""
    import yaml

    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"--{name} {text!r}: expected a mapping, e.g. '{{depth: 56, width: 16}}'")
    return value


def _finish(model, info, data, out: Path, res) -> None:
    """Save and report on rank 0 only; under torchrun every rank says how much it trained."""
    from edgecnn.compression.train import accuracy, finish_distributed, predict, rank_and_world
    from edgecnn.models.files import save_model

    rank, world = rank_and_world()
    if world > 1:
        click.echo(f"rank {rank}/{world}: trained on {res.history[-1]['images']} images per epoch", err=True)
    if rank == 0:
        save_model(model, info, out)
        click.echo(f"{out}: test accuracy {accuracy(predict(model, data, data.test), data.test.y):.4f}")
    finish_distributed()


def _user_model_file(spec, kwargs_text, weights, data_spec, mean, std, folder: Path) -> Path:
    """A user's file.py:Class / torchvision:NAME + state_dict, saved as an edgecnn model file in `folder`."""
    from edgecnn.models.files import save_model
    from edgecnn.models.user import load_user_model

    if weights is None:
        raise UserError(f"{spec}: an architecture needs its trained weights; add --weights STATE_DICT.pt")
    data = _load_data(data_spec, mean, std)
    model, info = load_user_model(spec, _kwargs(kwargs_text, "kwargs"), str(weights), data, "model")
    save_model(model, info, folder / "model.pt")
    return folder / "model.pt"


@main.command(epilog=_example("train"))
@click.option(
    "--model", "spec", default="lenet", show_default=True, help="Zoo name, torchvision:NAME or file.py:Class."
)
@click.option("--kwargs", "kwargs_text", help="Constructor arguments as a YAML mapping, e.g. '{depth: 20}'.")
@data_option
@train_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model file to write.")
def train(spec, kwargs_text, data_spec, mean, std, epochs, lr, batch_size, seed, out):
    """Train a model on labels alone and save it as an edgecnn model file (multi-process under torchrun)."""
    from edgecnn.compression.train import fit, init_distributed
    from edgecnn.models.files import build_model
    from edgecnn.models.user import data_model_info

    cfg = _train_cfg(epochs, lr, batch_size)
    data = _load_data(data_spec, mean, std)
    info = data_model_info(data, spec, _kwargs(kwargs_text, "kwargs"))
    model = build_model(info)
    init_distributed()
    res = fit(model, data, cfg, seed=seed, augment=_augment(data), label="train")
    _finish(model, info, data, out, res)


@main.command(epilog=_example("distill"))
@click.option(
    "--teacher",
    "teacher_spec",
    required=True,
    help="TorchScript or edgecnn model file, or file.py:Class / torchvision:NAME with --teacher-weights.",
)
@click.option("--teacher-kwargs", help="The teacher class's constructor arguments as a YAML mapping.")
@click.option("--teacher-weights", type=click.Path(path_type=Path), help="The teacher's state_dict file.")
@click.option("--student", "spec", default="lenet_small", show_default=True)
@click.option("--student-kwargs", help="The student's constructor arguments as a YAML mapping, e.g. '{width: 16}'.")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.7, show_default=True)
@click.option("--feature-loss", type=click.Choice(["none", "attention", "hints"]), default="none", show_default=True)
@click.option("--feature-weight", type=float, help="Weight of the feature loss (default: attention 1000, hints 1).")
@data_option
@train_options
@click.option("--out", type=click.Path(path_type=Path), required=True)
def distill(
    teacher_spec, teacher_kwargs, teacher_weights, spec, student_kwargs, temperature, alpha, feature_loss,
    feature_weight, data_spec, mean, std, epochs, lr, batch_size, seed, out,
):
    """Distil a teacher into a smaller student (Hinton soft targets + labels, optional feature loss)."""
    from edgecnn.compression.train import fit, init_distributed
    from edgecnn.config.recipe import DistillConfig
    from edgecnn.models.files import build_model
    from edgecnn.models.user import data_model_info, is_model_file, load_user_model

    t_info = None
    if is_model_file(teacher_spec) and Path(teacher_spec).is_file():
        t_model, t_info = load_user_model(teacher_spec, {}, teacher_weights and str(teacher_weights), None)
    data = _load_data(data_spec, mean, std, t_info)
    if t_info is None:
        t_model, _ = load_user_model(
            teacher_spec, _kwargs(teacher_kwargs, "teacher-kwargs"), teacher_weights and str(teacher_weights), data
        )
    kd = _train_cfg(
        epochs, lr, batch_size, DistillConfig, temperature=temperature, alpha=alpha, feature_loss=feature_loss,
        feature_weight=feature_weight,
    )
    info = data_model_info(data, spec, _kwargs(student_kwargs, "student-kwargs"))
    student = build_model(info)
    init_distributed()
    res = fit(student, data, kd, seed=seed, augment=_augment(data), teacher=t_model, kd=kd, label="distill")
    _finish(student, info, data, out, res)


@main.command(epilog=_example("prune"))
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--ratio", type=float, default=0.3, show_default=True, help="Fraction of channels to remove.")
@click.option("--macs-reduction", type=float, help="Target, e.g. 2 for 2x fewer MACs (instead of --ratio).")
@click.option("--params-budget", type=int, help="Target: at most this many parameters.")
@click.option("--latency-budget-ms", type=float, help="Target: batch-1 p50 ms on --latency-device (timed).")
@click.option("--latency-device", default="local-cpu", show_default=True, help="local-cpu or local-gpu.")
@click.option("--importance", type=click.Choice(["magnitude", "bn_scale", "taylor"]), default="magnitude")
@click.option("--global-pruning/--uniform", default=False, show_default=True,
              help="Rank channels across layers, or prune every layer alike.")
@click.option("--steps", type=int, default=1, show_default=True, help="Iterative steps, fine-tuning between them.")
@click.option("--round-to", type=int)
@click.option("--keep", "keep", multiple=True, metavar="LAYER", help="A layer name kept whole (repeatable).")
@data_option
@train_options
@click.option("--out", type=click.Path(path_type=Path), required=True)
def prune(
    model_path, ratio, macs_reduction, params_budget, latency_budget_ms, latency_device, importance, global_pruning,
    steps, round_to, keep, data_spec, mean, std, epochs, lr, batch_size, seed, out
):
    """Remove channels (Torch-Pruning), fine-tune distilling from the unpruned model, save reloadably."""
    from pydantic import ValidationError

    from edgecnn.config.recipe import Recipe
    from edgecnn.models.files import load_model_file
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages import PruneStage

    model, info = load_model_file(model_path)
    try:
        rec = Recipe(
            name="prune",
            seed=seed,
            data={
                "spec": data_spec,
                "mean": _floats(mean, "mean") or info.mean,
                "std": _floats(std, "std") or info.std,
            },
            prune={
                "ratio": ratio,
                "macs_reduction": macs_reduction,
                "params_budget": params_budget,
                "latency_budget_ms": latency_budget_ms,
                "latency_device": latency_device,
                "importance": importance,
                "global_pruning": global_pruning,
                "iterative_steps": steps,
                "round_to": round_to,
                "ignored_layers": list(keep),
                "epochs": epochs,
                "batch_size": batch_size,
                **({"lr": lr} if lr else {}),
            },
            distill=None,
            student=None,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']}") from None
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        teacher_dir.mkdir()
        shutil.copy(model_path, teacher_dir / "model.pt")
        ctx = Context(rec, Path(tmp))
        ctx.results["teacher"] = {"model_file": "model.pt", "_hash": "input"}
        run_stages([PruneStage()], ctx, resume=False)
        r = ctx.results["prune"]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "prune" / "model.pt", out)
    click.echo(
        f"{out}: MACs {r['macs_before']:,} -> {r['macs_after']:,} ({r['macs_reduction']:.2f}x), "
        f"params {r['params_before']:,} -> {r['params_after']:,}, torch p50 {r['latency']['p50_ms_before']:.3f} -> "
        f"{r['latency']['p50_ms_after']:.3f} ms ({r['latency']['speedup']:.2f}x), test accuracy {r['accuracy']:.4f}"
    )


def _export_common(model_path: Path, data_spec, mean, std):
    model, info = _load_any(model_path)
    if info is None:
        raise UserError(f"{model_path}: give an edgecnn model file (written by train/distill/prune/compress)")
    return model, info, _load_data(data_spec, mean, std, info)


@main.command(epilog=_example("export"))
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--format", "formats", default="onnx,tflite", show_default=True)
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run the onnxscript optimizer.")
@data_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the exported files.")
def export(model_path, formats, opset, simplify, data_spec, mean, std, out):
    """Export an edgecnn model file to ONNX and/or TFLite fp32, checking parity on the test split."""
    from edgecnn.compression.export import export_onnx, export_tflite
    from edgecnn.compression.train import predict
    from edgecnn.runtime.host import parity, runtime_logits

    model, info, data = _export_common(model_path, data_spec, mean, std)
    ref = predict(model, data, data.test).numpy()
    for fmt in [f.strip() for f in formats.split(",") if f.strip()]:
        if fmt not in ("onnx", "tflite"):
            raise UserError(f"--format {fmt!r}: use onnx and/or tflite")
        path = out / f"model.{fmt}"
        export_onnx(model, info.input_shape, path, opset, simplify) if fmt == "onnx" else export_tflite(
            model, info.input_shape, path
        )
        acc, logits = runtime_logits(path, data, data.test)
        p = parity(logits, ref, str(model_path))
        click.echo(
            f"{path}: accuracy {acc:.4f}, top-1 agreement with PyTorch {p['top1_agreement']:.4f}, "
            f"max |diff| {p['max_abs_diff']:.2e}"
        )


@main.command(epilog=_example("quantize"))
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--format", "formats", default="onnx,tflite", show_default=True)
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--onnx-format", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--activation", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="ONNX activation type.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="ONNX calibration method.")
@click.option("--tflite-io", type=click.Choice(["int8", "float"]), default="int8", show_default=True,
              help="Type of the TFLite input and output tensors.")
@data_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the int8 files.")
def quantize(model_path, formats, calib_samples, onnx_format, activation, method, tflite_io, data_spec, mean, std,
             out):
    """Quantize an edgecnn model file to int8 ONNX and/or TFLite, calibrated on real training images."""
    from edgecnn.compression.export import export_onnx, quantize_onnx, quantize_tflite
    from edgecnn.compression.train import accuracy, predict
    from edgecnn.runtime.host import runtime_logits

    model, info, data = _export_common(model_path, data_spec, mean, std)
    if calib_samples < 1:
        raise UserError("--calib-samples: must be at least 1")
    calib = data.normalize(data.train.x[:calib_samples])
    ref_acc = accuracy(predict(model, data, data.test), data.test.y)
    for fmt in [f.strip() for f in formats.split(",") if f.strip()]:
        if fmt == "onnx":
            path = out / "model.int8.onnx"
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(model, info.input_shape, Path(tmp) / "fp32.onnx")
                quantize_onnx(Path(tmp) / "fp32.onnx", path, calib.numpy(), fmt=onnx_format, activation=activation,
                              method=method)
        elif fmt == "tflite":
            path = out / "model.int8.tflite"
            quantize_tflite(model, info.input_shape, calib, path, io=tflite_io)
        else:
            raise UserError(f"--format {fmt!r}: use onnx and/or tflite")
        acc, _ = runtime_logits(path, data, data.test)
        click.echo(f"{path}: int8 accuracy {acc:.4f} (fp32 PyTorch {ref_acc:.4f})")


@main.command(epilog=_example("bench"))
@click.argument("model_path", type=click.Path(path_type=Path))
@data_option
@click.option(
    "--device", default="local-cpu", show_default=True, help="local-cpu, local-gpu, rpi-emu, a profile or ssh://..."
)
@click.option("--threads", type=click.IntRange(0, 256), default=1, show_default=True, help="0: all cores.")
@click.option("--min-seconds", type=click.FloatRange(0, 3600), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict for file.py:Class / torchvision:NAME.")
@click.option("--kwargs", "kwargs_text", help="Constructor arguments (YAML mapping) when MODEL is file.py:Class.")
def bench(model_path, data_spec, mean, std, device, threads, min_seconds, as_json, weights, kwargs_text):
    """Accuracy, latency and memory of one model file (.pt, .onnx, .tflite) on a device."""
    from edgecnn.devices.deploy import benchmark_on_device, model_job
    from edgecnn.devices.profiles import get_profile
    from edgecnn.runtime.host import run_agent_local, save_torchscript, write_eval_npz

    profile = get_profile(device)  # an unknown device is an error before any work
    shown, user_dir = str(model_path), tempfile.TemporaryDirectory()
    if ".py:" in shown or shown.startswith("torchvision:"):
        model_path = _user_model_file(shown, kwargs_text, weights, data_spec, mean, std, Path(user_dir.name))
    elif weights is not None:
        raise UserError(f"--weights: only for MODEL file.py:Class or torchvision:NAME; {shown} holds its weights")
    if not model_path.is_file():
        raise UserError(f"{model_path}: model file not found")
    suffix = model_path.suffix.lower()
    if suffix not in (".pt", ".ts", ".onnx", ".tflite"):
        raise UserError(f"{model_path}: unknown model format; give .pt, .onnx or .tflite")
    info = None
    with tempfile.TemporaryDirectory() as tmp:
        target = model_path
        if suffix in (".pt", ".ts"):
            model, info = _load_any(model_path)
            if info is not None:
                target = Path(tmp) / "model.ts"
                save_torchscript(model, info.input_shape, target)
        _check_model_file(model_path)
        data = _load_data(data_spec, mean, std, info)
        npz = Path(tmp) / "eval.npz"
        write_eval_npz(data, data.test, npz)
        if device == "local-cpu":
            result = run_agent_local(target, npz, threads=threads, min_seconds=min_seconds)
        else:  # the same agent, on the device through its transport
            entries, _ = benchmark_on_device(
                profile, [model_job(target)], npz, threads=threads, min_seconds=min_seconds, strict=True
            )
            result = entries[0]
    result.update({"model": shown, "size_bytes": Path(weights or model_path).stat().st_size, "device": device})
    user_dir.cleanup()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        click.echo(
            f"{shown}: accuracy {result['accuracy']:.4f} on {result['eval_samples']} images, "
            f"p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, peak {result['peak_memory_mb']:.0f} MB, "
            f"{result['runtime']}, {result['threads']} thread(s)"
        )


def _check_model_file(path: Path) -> None:
    """Check an ONNX or TFLite file's structure before a runtime parses it."""
    from edgecnn.runtime.checks import check_model_file

    check_model_file(path)


@main.command(epilog=_example("deploy"))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--device", required=True, help="local-cpu, local-gpu, rpi-emu, a devices/*.yaml name or ssh://[user@]host[:port].")
@click.option("--json", "as_json", is_flag=True, help="Print the device's model entries as JSON.")
@click.option("--keep", is_flag=True, help="Leave the work directory on the device.")
@click.option("--threads", type=int, help="Threads for the runtime (default: the device profile's).")
@click.option("--min-seconds", type=float, help="Latency measuring time per model (default: the run's).")
@data_option
def deploy(target, device, as_json, keep, threads, min_seconds, data_spec, mean, std):
    """Copy deployable models and the agent to a device, benchmark there, merge results into the report.

    TARGET is a finished run directory (its models, its evaluation images) or one model file
    (.onnx, .tflite, TorchScript), evaluated on --data.
    """
    from edgecnn.devices.deploy import deploy as deploy_to

    with tempfile.TemporaryDirectory() as tmp:
        npz = None
        if target.is_file():
            npz = _eval_npz(data_spec, mean, std, Path(tmp))
        entries = deploy_to(target, device, npz=npz, threads=threads, min_seconds=min_seconds, keep=keep,
                            log=None if as_json else lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    else:
        _print_table(entries)
        if target.is_dir():
            click.echo(f"report: {target / 'report.md'}")


def _eval_npz(data_spec: str, mean: str | None, std: str | None, folder: Path) -> Path:
    """The evaluation batch of a data spec, written for the agent."""
    from edgecnn.runtime.host import write_eval_npz

    data = _load_data(data_spec, mean, std)
    write_eval_npz(data, data.test, folder / "eval.npz")
    return folder / "eval.npz"


@main.command(epilog=_example("compare"))
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True,
              help="Folder for compare.md, compare.html (self-contained), compare.json and the plots.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), help="Budget: p50 latency.")
@click.option("--max-size-kb", type=click.FloatRange(min=0, min_open=True), help="Budget: model file size.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Budget: top-1 accuracy, 0..1.")
@click.option("--device", help="Only models measured on this device (e.g. local-cpu, rpi-emu).")
@click.option("--json", "as_json", is_flag=True, help="Print compare.json instead of the table.")
def compare(runs, out, max_latency_ms, max_size_kb, min_accuracy, device, as_json):
    """Size / accuracy / latency table and Pareto fronts across runs; the best model under budgets.

    RUN may be a run directory, its report.json, or a sweep directory (standing for its variants).
    """
    from edgecnn.analysis.compare import Budget, compare_runs

    result = compare_runs(list(runs), out, Budget(max_latency_ms, max_size_kb, min_accuracy, device))
    if as_json:
        click.echo((out / "compare.json").read_text())
        return
    _print_compare(result)
    click.echo(f"comparison: {out / 'compare.md'}, {out / 'compare.html'}")


def _print_compare(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgecnn.analysis.compare import COLUMNS, table_rows

    table = Table(*COLUMNS, title="edgecnn compare")
    for r, row in zip(result["rows"], table_rows(result["rows"]), strict=True):
        table.add_row(*row, style="bold green" if r.get("best") else None)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    if result.get("budget"):
        click.echo(("" if result["budget"]["met"] else "no model meets the budget: ") + result["budget"]["message"])


@main.command(epilog=_example("devices"))
@click.option("--json", "as_json", is_flag=True, help="Print the profiles and their reachability as JSON.")
def devices(as_json):
    """List device profiles and whether each is reachable."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecnn.devices.profiles import list_profiles, reachability

    profiles = list_profiles()
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(reachability, profiles))
    rows = [
        {"name": p.name, "transport": p.transport, "target": p.target(), "runtimes": p.runtimes,
         "reachable": r is None, "reason": r, "profile": p.source, "description": p.description}
        for p, r in zip(profiles, reasons, strict=True)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "reachable" if r["reachable"] else f"unreachable: {r['reason']}"
        click.echo(f"{r['name']:<12} {r['transport']:<9} {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
