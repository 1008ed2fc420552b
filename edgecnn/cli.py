"""The `edgecnn` command line: one click group, a subcommand per job, each a thin layer over edgecnn.api.

Options are parsed here, the api does the job, and its result is printed here. Bad input ends with
exit code 2 and one `error: ...` line on stderr (a traceback only with --debug); nothing already
written in a run directory is lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgecnn import api
from edgecnn.core.console import native_output_to_log_for_good, route_python_noise, terminal
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
    """Turns UserError (the API's one exception type) and bad options into `error: ...` with exit code 2."""

    def invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv
        if not debug:  # native libraries' and Python libraries' log lines go to the native log
            route_python_noise()
            native_output_to_log_for_good()
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="edgecnn")
def main(debug: bool) -> None:
    """edgecnn: distil, prune, quantize, export and benchmark a CNN for edge devices.

    \b
    Example:
      edgecnn compress recipes/quickstart.yaml
    """


def _print_rich(title: str, header: list[str], rows: list[list[str]], width: int, styles: list | None = None) -> None:
    """A rich table on stdout (`width` columns wide when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, title=title)
    for row, style in zip(rows, styles or [None] * len(rows), strict=True):
        table.add_row(*row, style=style)
    console = Console(file=terminal())
    if not console.is_terminal:
        console = Console(file=terminal(), width=width)
    console.print(table)


def _print_table(models: list[dict]) -> None:
    from edgecnn.analysis.report import header, model_rows, report_task

    _print_rich("edgecnn models", header(report_task(models)), model_rows(models), 160)


def _print_compare(result: dict) -> None:
    from edgecnn.analysis.compare import COLUMNS, table_rows

    styles = ["bold green" if r.get("best") else None for r in result["rows"]]
    _print_rich("edgecnn compare", COLUMNS, table_rows(result["rows"]), 200, styles)
    if result.get("budget"):
        click.echo(("" if result["budget"]["met"] else "no model meets the budget: ") + result["budget"]["message"])


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
    run = api.compress(recipe, out, list(overrides), resume=resume, force=force, workers=workers,
                       ray_address=ray_address)
    if run.sweep:
        _print_compare(run.report["compare"])
        click.echo(f"sweep: {run.run_dir / 'sweep.json'}, comparison: {run.run_dir / 'compare.html'}")
        return
    _print_table(run.models)
    click.echo(f"report: {run.run_dir / 'report.md'}")


# ---- single-stage commands: the api runs the same stages as compress --------------------------------


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


def train_options(f):
    f = click.option("--epochs", type=int, default=5, show_default=True)(f)
    f = click.option("--lr", type=float, help="Peak learning rate of the one-cycle schedule.")(f)
    f = click.option("--batch-size", type=int, default=128, show_default=True)(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    return f


def _print_trained(record: dict, history: list[dict]) -> None:
    """Under torchrun every rank says how much it trained; rank 0 wrote the file and reports its accuracy."""
    dist = record.get("distributed")
    if dist and history:
        click.echo(f"rank {dist['rank']}/{dist['world']}: trained on {history[-1]['images']} images per epoch",
                   err=True)
    if not dist or dist["rank"] == 0:
        click.echo(f"{record['path']}: test accuracy {record['accuracy']:.4f}")


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
    r = api.train(spec, out, data_spec, kwargs=kwargs_text, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                  mean=mean, std=std)
    _print_trained(r, (r["trained"] or {}).get("history", []))


@main.command(epilog=_example("distill"))
@click.option(
    "--teacher",
    "teacher_spec",
    required=True,
    help="TorchScript or edgecnn model file, or file.py:Class / torchvision:NAME with --teacher-weights.",
)
@click.option("--teacher-kwargs", help="The teacher class's constructor arguments as a YAML mapping.")
@click.option("--teacher-weights", type=click.Path(path_type=Path), help="The teacher's state_dict file.")
@click.option("--student", "spec",
              help="The student architecture: a zoo name, torchvision:NAME or file.py:Class  [default: lenet_small]")
@click.option("--student-kwargs", help="The student's constructor arguments as a YAML mapping, e.g. '{width: 16}'.")
@click.option("--keep-blocks", type=click.IntRange(min=0),
              help="Instead of --student: the teacher without all but N of its removable blocks (depth pruning).")
@click.option("--max-params", type=click.IntRange(min=1),
              help="With --keep-blocks: the student's parameter cap (a costly block over it is passed over).")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.7, show_default=True)
@click.option("--feature-loss", type=click.Choice(["none", "attention", "hints"]), default="none", show_default=True)
@click.option("--feature-weight", type=float, help="Weight of the feature loss (default: attention 1000, hints 1).")
@click.option("--teacher-runtime", type=click.Choice(["auto", "torch", "openvino"]), default="auto", show_default=True,
              help="Where the frozen teacher runs (auto: OpenVINO on a CPU where it stands in exactly).")
@data_option
@train_options
@click.option("--out", type=click.Path(path_type=Path), required=True)
def distill(
    teacher_spec, teacher_kwargs, teacher_weights, spec, student_kwargs, keep_blocks, max_params, temperature, alpha,
    feature_loss, feature_weight, teacher_runtime, data_spec, mean, std, epochs, lr, batch_size, seed, out,
):
    """Distil a teacher into a smaller student (Hinton soft targets + labels, optional feature loss)."""
    r = api.distill(
        teacher_spec, out, data_spec, student=spec, teacher_kwargs=teacher_kwargs, teacher_weights=teacher_weights,
        student_kwargs=student_kwargs, keep_blocks=keep_blocks, max_params=max_params, temperature=temperature,
        alpha=alpha, feature_loss=feature_loss, feature_weight=feature_weight, teacher_runtime=teacher_runtime,
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, mean=mean, std=std,
    )
    _print_trained(r, r["fit"]["history"])


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
@click.option("--keep", "keep", multiple=True, metavar="LAYER",
              help="A layer name or shell pattern (layer3.*.conv2) kept whole (repeatable).")
@data_option
@train_options
@click.option("--out", type=click.Path(path_type=Path), required=True)
def prune(
    model_path, ratio, macs_reduction, params_budget, latency_budget_ms, latency_device, importance, global_pruning,
    steps, round_to, keep, data_spec, mean, std, epochs, lr, batch_size, seed, out
):
    """Remove channels (Torch-Pruning), fine-tune distilling from the unpruned model, save reloadably."""
    r = api.prune(
        model_path, out, data_spec, ratio=ratio, macs_reduction=macs_reduction, params_budget=params_budget,
        latency_budget_ms=latency_budget_ms, latency_device=latency_device, importance=importance,
        global_pruning=global_pruning, steps=steps, round_to=round_to, keep=keep, epochs=epochs, lr=lr,
        batch_size=batch_size, seed=seed, mean=mean, std=std,
    )
    lat = r["latency"]
    click.echo(
        f"{out}: MACs {r['macs_before']:,} -> {r['macs_after']:,} ({r['macs_reduction']:.2f}x), "
        f"params {r['params_before']:,} -> {r['params_after']:,}, torch p50 {lat['p50_ms_before']:.3f} -> "
        f"{lat['p50_ms_after']:.3f} ms ({lat['speedup']:.2f}x), test accuracy {r['accuracy']:.4f}"
    )


def export_gate_options(f):
    f = click.option("--min-agreement", type=float, default=0.995, show_default=True,
                     help="Parity gate: least top-1 agreement of each fp32 file with PyTorch.")(f)
    f = click.option("--on-fail", type=click.Choice(["error", "warn"]), default="error", show_default=True,
                     help="A failed gate ends the command, or only warns.")(f)
    return f


def _print_export(record: dict) -> None:
    for f in record["files"].values():
        p, gate = f["parity"], f["gate"]
        click.echo(
            f"{f['path']}: accuracy {f['accuracy']:.4f}, top-1 agreement with PyTorch {p['top1_agreement']:.4f}, "
            f"max |diff| {p['max_abs_diff']:.2e}; parity gate (>= {gate['min_agreement']:g}): "
            + ("passed" if gate["passed"] else "FAILED, kept (--on-fail warn)")
        )


@main.command(epilog=_example("export"))
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--format", "formats", default="onnx,tflite,openvino", show_default=True)
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run the onnxscript optimizer.")
@export_gate_options
@data_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the exported files.")
def export(model_path, formats, opset, simplify, min_agreement, on_fail, data_spec, mean, std, out):
    """Export an edgecnn model file to ONNX, TFLite and/or OpenVINO fp32, gated on parity with PyTorch.

    Writes the files and export.json (the export stage's record, as in a compress run) into --out.
    """
    r = api.export(model_path, out, data_spec, formats=formats, opset=opset, simplify=simplify,
                   min_agreement=min_agreement, on_fail=on_fail, mean=mean, std=std)
    _print_export(r)


@main.command(epilog=_example("quantize"))
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--format", "formats", default="onnx,tflite,openvino", show_default=True)
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--select", type=click.Choice(["auto", "fixed"]), default="auto", show_default=True,
              help="auto: measure several ONNX configs and keep the fastest within the budget; fixed: the given one.")
@click.option("--onnx-format", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--activation", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="ONNX activation type.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="ONNX calibration method.")
@click.option("--tflite-io", type=click.Choice(["int8", "float"]), default="int8", show_default=True,
              help="Type of the TFLite input and output tensors.")
@click.option("--accuracy-budget", type=float, default=0.01, show_default=True,
              help="Accuracy gate: most top-1 int8 may lose against fp32 PyTorch, 0..1.")
@click.option("--qat", type=click.Choice(["auto", "true", "false"]), default="auto", show_default=True,
              help="Quantization-aware training: if no post-training candidate meets the budget (auto), always, never.")
@click.option("--fallback", default="auto", show_default=True,
              help="Layers kept in float: auto (the fewest most sensitive, when full int8 misses the budget), none, "
                   "or module names, comma-separated (e.g. features.0,classifier).")
@click.option("--sensitivity", is_flag=True,
              help="Measure every layer's int8 sensitivity even when int8 meets the budget.")
@export_gate_options
@click.option("--threads", type=int, default=1, show_default=True, help="Threads when timing the candidates.")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Timing per candidate (at most 0.5 s).")
@data_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the int8 files.")
def quantize(model_path, formats, calib_samples, select, onnx_format, activation, method, tflite_io, accuracy_budget,
             qat, fallback, sensitivity, min_agreement, on_fail, threads, min_seconds, data_spec, mean, std, out):
    """Quantize an edgecnn model file to int8 ONNX, TFLite and/or OpenVINO, calibrated on real training images.

    The quantize stage of compress: the fp32 exports pass the parity gate, int8 candidates are measured
    (accuracy on the validation split, batch-1 latency here), the fastest within --accuracy-budget is kept,
    and each runtime deploys int8 only where it beats fp32. Writes the int8 and fp32 files,
    quantize.json and export.json into --out.
    """
    from edgecnn.compression.int8_select import describe

    r = api.quantize(
        model_path, out, data_spec, formats=formats, calib_samples=calib_samples, select=select,
        onnx_format=onnx_format, activation=activation, method=method, tflite_io=tflite_io,
        accuracy_budget=accuracy_budget, qat=qat, fallback=fallback, sensitivity=sensitivity, on_fail=on_fail,
        min_agreement=min_agreement, threads=threads,
        min_seconds=min_seconds, mean=mean, std=std,
    )
    _print_export(r["export"])
    for fmt, table in r["candidates"].items():
        click.echo(f"{fmt} candidates (test accuracy, batch-1 p50 on local-cpu):")
        for c in table:
            mark = "  <- chosen" if c["chosen"] else ("" if c["within_budget"] else "  (over the budget)")
            click.echo(f"  {c['label']:<36} {c['accuracy']:.4f}  {c['p50_ms']:.3f} ms{mark}")
    for f in r["files"].values():
        gate = f["gate"]
        passed = "passed" if gate["passed"] else "FAILED, kept (--on-fail warn)"
        if "deploy_precision" not in f:  # OpenVINO bf16 / fp16 inference of the fp32 IR
            click.echo(f"{f['path']}: {f['precision']} accuracy {f['accuracy']:.4f} (fp32 PyTorch "
                       f"{f['reference_accuracy']:.4f}), p50 {f['p50_ms']:.3f} ms; accuracy gate (loss <= "
                       f"{gate['accuracy_budget']:g}): " + ("passed" if gate["passed"] else "FAILED, never deployed"))
            continue
        click.echo(
            f"{f['path']}: int8 accuracy {f['accuracy']:.4f} (fp32 PyTorch {f['reference_accuracy']:.4f}), "
            f"{describe(f['config'])}{' QAT' if f['qat'] else ''}; "
            f"accuracy gate (loss <= {gate['accuracy_budget']:g}): " + passed
            + f"; deploy {f['deploy_precision']} (int8 p50 {f['p50_ms']:.3f} ms, fp32 {f['fp32_p50_ms']:.3f} ms)"
            + (f"; kept in float: {', '.join(f['float_layers'])}" if f.get("float_layers") else "")
        )
    for note in r["notes"]:
        click.echo(f"note: {note}")


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
    """Accuracy, latency and memory of one model file (.pt, .onnx, .tflite, OpenVINO .xml) on a device."""
    result = api.bench(model_path, data_spec, device, threads, min_seconds=min_seconds, weights=weights,
                       kwargs=kwargs_text, mean=mean, std=std)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lat = result["latency_ms"]
    click.echo(
        f"{result['model']}: accuracy {result['accuracy']:.4f} on {result['eval_samples']} images, "
        f"p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, peak {result['peak_memory_mb']:.0f} MB, "
        f"{result['runtime']}, {result['threads']} thread(s)"
    )


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
    (.onnx, .tflite, an OpenVINO .xml, TorchScript), evaluated on --data.
    """
    entries = api.deploy(target, device, data=data_spec, threads=threads, min_seconds=min_seconds, keep=keep,
                         mean=mean, std=std, log=None if as_json else lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    _print_table(entries)
    if target.is_dir():
        click.echo(f"report: {target / 'report.md'}")


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
    result = api.compare(list(runs), out, max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
                         min_accuracy=min_accuracy, device=device)
    if as_json:
        click.echo((out / "compare.json").read_text())
        return
    _print_compare(result)
    click.echo(f"comparison: {out / 'compare.md'}, {out / 'compare.html'}")


@main.command(epilog=_example("devices"))
@click.option("--json", "as_json", is_flag=True, help="Print the profiles and their reachability as JSON.")
def devices(as_json):
    """List device profiles and whether each is reachable."""
    rows = api.list_devices()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "reachable" if r["reachable"] else f"unreachable: {r['reason']}"
        click.echo(f"{r['name']:<12} {r['transport']:<9} {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
