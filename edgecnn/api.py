"""The Python API: every job of the `edgecnn` command line as a function (the CLI is a thin layer over these).

    import edgecnn

    run = edgecnn.compress("recipes/quickstart.yaml", out="runs/qs", overrides={"distill.epochs": 2})
    print(run.best(max_latency_ms=1.0)["name"])

`compress` runs a recipe; `train`, `distill`, `prune`, `export` and `quantize` run one stage on model
files, through the very stage code `compress` runs (same gates, same selection, same result
records); `bench`, `deploy` and `compare` measure and compare models. Bad input raises `UserError`,
whose message is the line the CLI prints after `error:`. While a call runs, native libraries' log
lines go to the native log (edgecnn.core.console), not to the terminal or the notebook.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgecnn.config.recipe import Overrides, Recipe
from edgecnn.core.console import native_output_to_log
from edgecnn.core.errors import UserError

__all__ = ["Run", "UserError", "compress", "train", "distill", "prune", "export", "quantize", "bench", "deploy",
           "compare", "list_devices"]

F = TypeVar("F", bound=Callable[..., Any])
Floats = Sequence[float] | str | None
"""Per-channel normalisation: numbers, or comma-separated text as on the command line (`0.5,0.5,0.5`)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Native output to the log; exhausted memory or disk and unusable paths as UserError.

    This is where the CLI's one-line wording for those lives: the CLI only prints UserError.
    """
    with native_output_to_log():
        try:
            yield
        except UserError:
            raise
        except MemoryError as e:
            raise UserError(
                "out of memory; lower data.calib_samples or train batch_size, or free memory "
                "(finished stages are kept; rerun with --resume)"
            ) from e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"{e.filename or 'disk'}: {e.strerror}; free space or choose another --out "
                    "(finished stages are kept; rerun with --resume)"
                ) from e
            if e.filename is None or e.errno is None:
                raise
            # a path the user gave that cannot be used (not a folder, read-only, no permission, too long)
            raise UserError(f"{e.filename}: {e.strerror}; check the path or choose another --out") from e


def _api(fn: F) -> F:
    """An API function: runs under `user_errors()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ---- runs ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished run: its folder, its report.json and the report's model entries.

    For a sweep (`sweep` true), `report` is sweep.json's content (with the comparison) and
    `variants` holds each finished variant's Run; `models` then lists every variant's entries.
    """

    run_dir: Path
    report: dict = field(repr=False)
    variants: dict[str, Run] = field(default_factory=dict, repr=False)
    sweep: bool = False

    @property
    def models(self) -> list[dict]:
        """The report's model entries (a sweep: every variant's)."""
        if self.variants:
            return [m for v in self.variants.values() for m in v.models]
        return list(self.report.get("models", []))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """The Run of a finished run directory (or sweep directory) on disk."""
        from edgecnn.analysis.compare import expand_runs, load_report

        run_dir = Path(run_dir)
        sweep = run_dir / "sweep.json"
        if run_dir.is_dir() and sweep.is_file() and not (run_dir / "report.json").exists():
            try:
                summary = json.loads(sweep.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise UserError(f"{sweep}: unreadable ({e.__class__.__name__}); rerun the sweep") from None
            return cls(run_dir, summary, {v.name: cls(v, load_report(v)) for v in expand_runs([run_dir])}, sweep=True)
        return cls(run_dir, load_report(run_dir))

    def best(
        self,
        max_latency_ms: float | None = None,
        max_size_kb: float | None = None,
        min_accuracy: float | None = None,
        device: str | None = None,
    ) -> dict:
        """The model entry `edgecnn compare` names best within these budgets: the most accurate, ties by p50.

        Raises UserError saying which model comes nearest when none meets them.
        """
        from edgecnn.analysis.compare import choose, flatten

        labelled = [(name, r.report) for name, r in self.variants.items()] or [(self.run_dir.name, self.report)]
        rows = flatten(labelled)
        entries = [m for _, rep in labelled for m in rep["models"]]
        result = choose(rows, _budget(max_latency_ms, max_size_kb, min_accuracy, device))
        if not result["met"]:
            raise UserError(f"no model meets the budget: {result['message']}")
        return entries[next(i for i, r in enumerate(rows) if r is result["best"])]


def _budget(max_latency_ms: float | None, max_size_kb: float | None, min_accuracy: float | None,
            device: str | None):
    """compare's Budget, its limits checked as the CLI's options check them."""
    from edgecnn.analysis.compare import Budget

    for name, v in (("--max-latency-ms", max_latency_ms), ("--max-size-kb", max_size_kb)):
        if v is not None and not v > 0:
            raise UserError(f"{name} {v}: must be a number above 0")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise UserError(f"--min-accuracy {min_accuracy}: give top-1 accuracy as 0..1")
    return Budget(max_latency_ms, max_size_kb, min_accuracy, device)


def _recipe(recipe_or_path: str | Path | Mapping | Recipe, overrides: Overrides | None) -> tuple[Recipe, Path]:
    """The validated recipe and the folder its relative paths (and a sweep's) resolve against."""
    from edgecnn.config.recipe import load_recipe, recipe_dict, recipe_from_dict

    overrides = overrides or ()
    if isinstance(recipe_or_path, Recipe):
        return recipe_from_dict(recipe_dict(recipe_or_path), Path.cwd(), overrides), Path.cwd()
    if isinstance(recipe_or_path, Mapping):
        return recipe_from_dict(dict(recipe_or_path), Path.cwd(), overrides), Path.cwd()
    if isinstance(recipe_or_path, str | Path):
        path = Path(recipe_or_path)
        return load_recipe(path, overrides), path.resolve().parent
    raise UserError(f"recipe {type(recipe_or_path).__name__}: give a recipe file path, a mapping or a Recipe")


@_api
def compress(
    recipe_or_path: str | Path | Mapping[str, Any] | Recipe,
    out: str | Path | None = None,
    overrides: Overrides | None = None,
    resume: bool = False,
    force: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> Run:
    """Run every stage of a recipe (teacher, distill, prune, export, quantize, bench) and write its report.

    `recipe_or_path` is a YAML file, a mapping of the same sections or a Recipe; `overrides` sets
    values by dotted key (`{"distill.epochs": 2}`, or `["distill.epochs=2"]` as `--set` takes them).
    `out` is the run directory (default runs/<recipe name>); an existing one needs `resume`
    (reuse finished stages) or `force` (redo them). A recipe with a `sweep:` section runs each
    variant (`workers` at once, or on Ray at `ray_address`) and compares them.
    """
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.run_report import write_run_report
    from edgecnn.pipeline.runner import open_run, run_stages
    from edgecnn.pipeline.stages.registry import default_stages
    from edgecnn.pipeline.sweep import run_sweep

    if resume and force:
        raise UserError("--resume and --force: give one; --resume reuses finished stages, --force redoes them all")
    rec, base = _recipe(recipe_or_path, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / rec.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: --out is a file; give a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or force):
        raise UserError(
            f"{run_dir}: run directory exists; add --resume to continue it, --force to redo it, or choose another --out"
        )
    if rec.sweep is not None:
        summary = run_sweep(rec, base, run_dir, force=force, workers=workers, ray_address=ray_address)
        variants = [run_dir / v["path"] for v in summary["variants"] if v["status"] in ("ran", "finished earlier")]
        return Run(run_dir, summary, {p.name: Run.load(p) for p in variants}, sweep=True)
    if workers or ray_address:
        raise UserError("--workers/--ray: only for recipes with a sweep section")
    ctx = Context(rec, run_dir)
    with open_run(ctx):  # inputs checked first; then locked, and a full disk is one `error:` line
        status = run_stages(default_stages(), ctx, resume=resume)
        report = write_run_report(ctx, status)
    return Run(run_dir, report)


# ---- one stage on model files ------------------------------------------------------------------------


def _floats(value: Floats, name: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return [float(v) for v in value]
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--{name} {value!r}: expected comma-separated numbers, e.g. 0.5,0.5,0.5") from None


def _kwargs(value: str | Mapping | None, name: str) -> dict:
    """Constructor arguments: a mapping, or YAML/JSON text of one as given on the command line."""
    import yaml

    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UserError(f"--{name} {value!r}: expected a mapping, e.g. '{{depth: 56, width: 16}}'")
    return parsed


def _formats(formats: str | Sequence[str]) -> list[str]:
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f).strip() for f in formats]
    items = [f for f in items if f]
    for fmt in items:
        if fmt not in ("onnx", "tflite", "openvino"):
            raise UserError(f"--format {fmt!r}: use onnx, tflite and/or openvino")
    return items


def _fallback(value: str | Sequence[str]) -> str | list[str]:
    """quantize.fallback from "auto", "none", "a,b" or a list of module names."""
    if isinstance(value, str):
        return value if value in ("auto", "none") else [n.strip() for n in value.split(",")]
    return list(value)


def _edgecnn_model(path: str | Path):
    """The ModelInfo of an edgecnn model file (written by train/distill/prune/compress); UserError otherwise."""
    from edgecnn.models.files import is_torchscript, load_model_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    if is_torchscript(path):
        raise UserError(f"{path}: give an edgecnn model file (written by train/distill/prune/compress)")
    return load_model_file(path)[1]


def _data(spec: str, mean: Floats, std: Floats, info=None, **extra) -> dict:
    """The `data` section of a single-stage recipe: normalisation from the options, else from the model file."""
    m = _floats(mean, "mean") or (info.mean if info is not None and info.mean else None)
    s = _floats(std, "std") or (info.std if info is not None and info.std else None)
    return {"spec": spec, "mean": m, "std": s, **extra}


OPTION_NAMES = {
    "data.spec": "--data",
    "prune.iterative_steps": "--steps",
    "prune.ignored_layers": "--keep",
    "prune": "--macs-reduction/--params-budget/--latency-budget-ms",
    "quantize.onnx.format": "--onnx-format",
    "quantize.tflite.io": "--tflite-io",
    "quantize.qat.enabled": "--qat",
    "export.formats": "--format",
}
"""Recipe fields of single-stage commands whose option is not `--<last key>`."""


def _stage_recipe(name: str, sections: dict) -> Recipe:
    """The recipe of a single-stage command: only the named sections; a bad value names its option."""
    from pydantic import ValidationError

    from edgecnn.config.recipe import resolve_paths

    raw = {"name": name, "student": None, "distill": None, "prune": None, "quantize": None, "export": None,
           **sections}
    try:
        return Recipe.model_validate(resolve_paths(raw, Path.cwd()))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        option = OPTION_NAMES.get(loc) or f"--{str(err['loc'][-1]).replace('_', '-')}"
        raise UserError(f"{option}: {err['msg']}") from None


def _run_stages(recipe: Recipe, names: Sequence[str], work: Path):
    """Run the teacher stage (it loads, or trains, the input model) and the stages `names` of `recipe`.

    The run directory is fresh, under `work`; the stages are compress's own, with its gates.
    """
    from edgecnn.core.progress import status_lines_off
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.registry import default_stages

    ctx = Context(recipe, work / "run")
    stages = [s for s in default_stages() if s.name in ("teacher", *names)]
    with status_lines_off():  # the caller reports the records; the stages' status lines would repeat them
        run_stages(stages, ctx, resume=False)
    return ctx


def _record(ctx, stage: str) -> dict:
    """A stage's result record as the pipeline keeps it (without the internal fingerprint)."""
    return {k: v for k, v in ctx.results[stage].items() if k != "_hash"}


def _check_file_out(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"{out}: --out is a folder; give the model file to write, e.g. {out / 'model.pt'}")


def _check_folder_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out is a file; give a folder")


def _place(src: Path, dst: Path) -> None:
    """Copy a finished artifact to where the user asked (atomically: complete or absent).

    An OpenVINO .xml takes its .bin along (the .bin first, so a present .xml always has its weights).
    """
    from edgecnn.core.artifacts import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    pairs = [(src, dst)]
    if src.suffix.lower() == ".xml" and src.with_suffix(".bin").is_file():
        pairs.insert(0, (src.with_suffix(".bin"), dst.with_suffix(".bin")))
    for s, d in pairs:
        with atomic_path(d) as tmp:
            shutil.copyfile(s, tmp)


def _write_record(path: Path, record: dict) -> None:
    from edgecnn.core.artifacts import atomic_write_json

    atomic_write_json(path, record)


def _model_out(ctx, stage: str, out: Path, record: dict, distributed: bool) -> dict:
    """Save a stage's model file to `out` (rank 0 only under torchrun); the record says where and on which rank."""
    from edgecnn.compression.train import finish_distributed, rank_and_world

    rank, world = rank_and_world()
    if rank == 0:
        _place(ctx.stage_dir(stage) / record["model_file"], out)
    if distributed:
        finish_distributed()
    return {**record, "path": str(out), **({"distributed": {"rank": rank, "world": world}} if world > 1 else {})}


@_api
def train(
    model: str = "lenet",
    out: str | Path = "model.pt",
    data: str = "mnist5k",
    *,
    kwargs: str | Mapping | None = None,
    epochs: int = 5,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Train a model on labels alone (the teacher stage without weights) and save it as an edgecnn model file.

    `model` is a zoo name, torchvision:NAME or file.py:Class. Under torchrun every process trains on
    its shard and rank 0 writes `out`. Returns the teacher stage's record (accuracy on the test
    split, MACs, params, the training history) and `path`.
    """
    from edgecnn.compression.train import init_distributed
    from edgecnn.models.user import is_model_file

    out = Path(out)
    _check_file_out(out)
    if is_model_file(model):
        raise UserError(f"--model {model}: a saved model; give an architecture (zoo name, torchvision:NAME or "
                        "file.py:Class) to train")
    rec = _stage_recipe("train", {
        "seed": seed,
        "data": _data(data, mean, std),
        "teacher": {"model": model, "kwargs": _kwargs(kwargs, "kwargs")},
        "train": {"epochs": epochs, "batch_size": batch_size, **({"lr": lr} if lr else {})},
    })
    distributed = init_distributed()
    with tempfile.TemporaryDirectory(prefix="edgecnn-train-") as work:
        ctx = _run_stages(rec, (), Path(work))
        return _model_out(ctx, "teacher", out, _record(ctx, "teacher"), distributed)


def _student(spec: str | None, kwargs: str | Mapping | None, keep_blocks: int | None, max_params: int | None
             ) -> dict:
    if keep_blocks is None:
        if max_params is not None:
            raise UserError("--max-params caps a student cut from the teacher; add --keep-blocks N")
        return {"model": spec or "lenet_small", "kwargs": _kwargs(kwargs, "student-kwargs")}
    if spec is not None or kwargs:
        raise UserError("--keep-blocks cuts the student from the teacher; drop --student and --student-kwargs")
    return {"from_teacher": {"keep_blocks": keep_blocks, "max_params": max_params}}


@_api
def distill(
    teacher: str | Path,
    out: str | Path = "student.pt",
    data: str = "mnist5k",
    *,
    student: str | None = None,
    teacher_kwargs: str | Mapping | None = None,
    teacher_weights: str | Path | None = None,
    student_kwargs: str | Mapping | None = None,
    keep_blocks: int | None = None,
    max_params: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    feature_loss: str = "none",
    feature_weight: float | None = None,
    teacher_runtime: str = "auto",
    epochs: int = 5,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Distil a teacher into a smaller student (the distill stage) and save the student to `out`.

    `teacher` is a TorchScript or edgecnn model file, or file.py:Class / torchvision:NAME with
    `teacher_weights`; `teacher_runtime` (auto, torch, openvino) is where the frozen teacher runs.
    The student is `student` (default lenet_small) or, with `keep_blocks`, the teacher itself without
    all but `keep_blocks` of its removable blocks (depth pruning, ranked on validation images), passing
    over any block that would take it over `max_params` parameters.
    Returns the distill stage's record, `teacher` (the teacher stage's record) and `path`.
    """
    from edgecnn.compression.train import init_distributed
    from edgecnn.models.user import is_model_file, load_user_model

    out, teacher = Path(out), str(teacher)
    _check_file_out(out)
    weights = str(teacher_weights) if teacher_weights else None
    info = None
    if is_model_file(teacher) and Path(teacher).is_file():  # its normalisation is the data's
        _, info = load_user_model(teacher, {}, weights, None)
    elif not is_model_file(teacher) and weights is None:
        raise UserError(f"--teacher {teacher}: an architecture needs its trained weights; add --teacher-weights "
                        "STATE_DICT.pt")
    rec = _stage_recipe("distill", {
        "seed": seed,
        "data": _data(data, mean, std, info),
        "teacher": {"model": teacher, "kwargs": _kwargs(teacher_kwargs, "teacher-kwargs"), "weights": weights},
        "student": _student(student, student_kwargs, keep_blocks, max_params),
        "distill": {"epochs": epochs, "batch_size": batch_size, "temperature": temperature, "alpha": alpha,
                    "feature_loss": feature_loss, "feature_weight": feature_weight, "teacher_runtime": teacher_runtime,
                    **({"lr": lr} if lr else {})},
    })
    distributed = init_distributed()
    with tempfile.TemporaryDirectory(prefix="edgecnn-distill-") as work:
        ctx = _run_stages(rec, ("distill",), Path(work))
        record = {**_record(ctx, "distill"), "teacher": _record(ctx, "teacher")}
        return _model_out(ctx, "distill", out, record, distributed)


@_api
def prune(
    model: str | Path,
    out: str | Path = "pruned.pt",
    data: str = "mnist5k",
    *,
    ratio: float | None = 0.3,
    macs_reduction: float | None = None,
    params_budget: int | None = None,
    latency_budget_ms: float | None = None,
    latency_device: str = "local-cpu",
    importance: str = "magnitude",
    global_pruning: bool = False,
    steps: int = 1,
    round_to: int | None = None,
    keep: Sequence[str] = (),
    epochs: int = 5,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Remove channels (the prune stage: Torch-Pruning, then fine-tuning distilled from the unpruned model).

    The target is `ratio`, or one of `macs_reduction`, `params_budget`, `latency_budget_ms` (timed
    on `latency_device`); `keep` names layers kept whole (names or shell patterns such as `layer3.*.conv2`).
    Returns the prune stage's record (MACs, params and latency before/after, test accuracy, the search) and `path`.
    """
    out = Path(out)
    _check_file_out(out)
    info = _edgecnn_model(model)
    rec = _stage_recipe("prune", {
        "seed": seed,
        "data": _data(data, mean, std, info),
        "teacher": {"model": str(model)},
        "prune": {"ratio": ratio, "macs_reduction": macs_reduction, "params_budget": params_budget,
                  "latency_budget_ms": latency_budget_ms, "latency_device": latency_device, "importance": importance,
                  "global_pruning": global_pruning, "iterative_steps": steps, "round_to": round_to,
                  "ignored_layers": list(keep), "epochs": epochs, "batch_size": batch_size,
                  **({"lr": lr} if lr else {})},
    })
    with tempfile.TemporaryDirectory(prefix="edgecnn-prune-") as work:
        ctx = _run_stages(rec, ("prune",), Path(work))
        return _model_out(ctx, "prune", out, _record(ctx, "prune"), False)


def _export_section(formats, opset: int, simplify: bool, min_agreement: float, on_fail: str) -> dict:
    return {"formats": _formats(formats), "opset": opset, "simplify": simplify, "min_agreement": min_agreement,
            "on_fail": on_fail}


def _export_out(ctx, out: Path) -> dict:
    """The export stage's fp32 files copied into `out`; its record with each file's path and parity gate."""
    record = _record(ctx, "export")
    for f in record["files"].values():  # each with the stage's own gate record (decided on validation)
        _place(ctx.stage_dir("export") / f["file"], out / f["file"])
        f["path"] = str(out / f["file"])
    _write_record(out / "export.json", record)
    return record


@_api
def export(
    model: str | Path,
    out: str | Path = "exported",
    data: str = "mnist5k",
    *,
    formats: str | Sequence[str] = ("onnx", "tflite", "openvino"),
    opset: int = 18,
    simplify: bool = True,
    min_agreement: float = 0.995,
    on_fail: str = "error",
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Export an edgecnn model file to fp32 ONNX, TFLite and/or OpenVINO IR (the export stage, with its parity gate).

    Each file must agree with PyTorch on at least `min_agreement` of the validation images (top-1), else
    the call fails (`on_fail="warn"`: keeps it with a warning). Writes the files and export.json
    (the stage's record) into `out`; returns the record, each file with its `path` and `gate`.
    """
    out = Path(out)
    _check_folder_out(out)
    info = _edgecnn_model(model)
    rec = _stage_recipe("export", {
        "data": _data(data, mean, std, info),
        "teacher": {"model": str(model)},
        "export": _export_section(formats, opset, simplify, min_agreement, on_fail),
    })
    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as work:
        ctx = _run_stages(rec, ("export",), Path(work))
        return _export_out(ctx, out)


@_api
def quantize(
    model: str | Path,
    out: str | Path = "int8",
    data: str = "mnist5k",
    *,
    formats: str | Sequence[str] = ("onnx", "tflite", "openvino"),
    calib_samples: int = 256,
    select: str = "auto",
    onnx_format: str = "qdq",
    activation: str = "uint8",
    method: str = "minmax",
    tflite_io: str = "int8",
    accuracy_budget: float = 0.01,
    qat: str = "auto",
    fallback: str | Sequence[str] = "auto",
    sensitivity: bool = False,
    on_fail: str = "error",
    min_agreement: float = 0.995,
    threads: int = 1,
    min_seconds: float = 1.0,
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Quantize an edgecnn model file to int8 ONNX, TFLite and/or OpenVINO (the export and quantize stages).

    As in `compress`: the fp32 exports pass the parity gate first; `select="auto"` measures several
    ONNX configs (the given one first; OpenVINO: both NNCF presets), each on the validation split and
    at batch 1 on this CPU with `threads`, and keeps the fastest within `accuracy_budget` (top-1 loss
    against fp32 PyTorch),
    keeping layers in float first (`fallback`: "auto" the fewest most sensitive, "none", or module
    names as a list or "a,b"; `sensitivity=True` measures every layer's int8 loss even when int8
    meets the budget), then quantization-aware training (`qat`); each runtime deploys int8 only where it
    beats its fp32 file. Writes the int8 and fp32 files, quantize.json and export.json into `out`;
    returns the quantize stage's record (candidates, chosen config, `gate`, deploy choice, notes),
    each file with its `path`, and `export` (the export record).
    """
    out = Path(out)
    _check_folder_out(out)
    info = _edgecnn_model(model)
    rec = _stage_recipe("quantize", {
        "data": _data(data, mean, std, info, calib_samples=calib_samples),
        "teacher": {"model": str(model)},
        "export": _export_section(formats, 18, True, min_agreement, on_fail),
        "quantize": {"select": select, "onnx": {"format": onnx_format, "activation": activation, "method": method},
                     "tflite": {"io": tflite_io}, "accuracy_budget": accuracy_budget, "qat": {"enabled": qat},
                     "fallback": _fallback(fallback), "sensitivity": sensitivity, "on_fail": on_fail},
        "bench": {"device": "local-cpu", "threads": threads, "min_seconds": min_seconds},
    })
    with tempfile.TemporaryDirectory(prefix="edgecnn-quantize-") as work:
        ctx = _run_stages(rec, ("export", "quantize"), Path(work))
        exported = _export_out(ctx, out)
        record = _record(ctx, "quantize")
        for fmt, f in record["files"].items():
            _place(ctx.stage_dir("quantize") / f["file"], out / f["file"])
            f["path"] = str(out / f["file"])
            if "within_budget" in f:  # OpenVINO bf16 / fp16: one file, gated by itself
                passed = f["within_budget"]
            else:
                passed = next(c for c in record["candidates"][fmt] if c["chosen"])["within_budget"]
            f["gate"] = {"accuracy_budget": accuracy_budget, "passed": passed}
        for key in ("table", "json", "plot") if record.get("sensitivity") else ():  # the int8 sensitivity table
            _place(ctx.stage_dir("quantize") / record["sensitivity"][key], out / record["sensitivity"][key])
        _write_record(out / "quantize.json", record)
        return {**record, "export": exported}


# ---- measuring, deploying, comparing ---------------------------------------------------------------


def _load_data(spec: str, mean: Floats, std: Floats, info=None):
    from edgecnn.data.datasets import load_data

    d = _data(spec, mean, std, info)
    return load_data(d["spec"], 0.1, d["mean"], d["std"])


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"--{name} {value}: must be between {low:g} and {high:g}")


@_api
def bench(
    model: str | Path,
    data: str = "mnist5k",
    device: str = "local-cpu",
    threads: int = 1,
    *,
    min_seconds: float = 1.0,
    weights: str | Path | None = None,
    kwargs: str | Mapping | None = None,
    mean: Floats = None,
    std: Floats = None,
) -> dict:
    """Accuracy, latency and memory of one model on a device, measured by the device agent.

    `model` is a `.pt` (edgecnn or TorchScript), `.onnx`, `.tflite` or OpenVINO `.xml` file, or file.py:Class /
    torchvision:NAME with `weights`; `threads=0` uses every core. Returns the agent's result with
    `model`, `size_bytes` and `device`.
    """
    from edgecnn.devices.deploy import benchmark_on_device, model_job
    from edgecnn.devices.profiles import get_profile
    from edgecnn.models.files import is_torchscript, load_model_file, save_model
    from edgecnn.models.user import load_user_model
    from edgecnn.runtime.agent import MODEL_EXTENSIONS, model_size
    from edgecnn.runtime.checks import check_model_file
    from edgecnn.runtime.host import run_agent_local, save_torchscript, write_eval_npz

    _check_range("threads", threads, 0, 256)
    _check_range("min-seconds", min_seconds, 0, 3600)
    profile = get_profile(device)  # an unknown device is an error before any work
    shown = str(model)
    with tempfile.TemporaryDirectory(prefix="edgecnn-bench-") as tmp:
        path = Path(model)
        if ".py:" in shown or shown.startswith("torchvision:"):
            if weights is None:
                raise UserError(f"{shown}: an architecture needs its trained weights; add --weights STATE_DICT.pt")
            user, info = load_user_model(shown, _kwargs(kwargs, "kwargs"), str(weights), _load_data(data, mean, std),
                                         "model")
            path = Path(tmp) / "model.pt"
            save_model(user, info, path)
        elif weights is not None:
            raise UserError(f"--weights: only for MODEL file.py:Class or torchvision:NAME; {shown} holds its weights")
        if not path.is_file():
            raise UserError(f"{path}: model file not found")
        if path.suffix.lower() not in MODEL_EXTENSIONS:
            raise UserError(f"{path}: unknown model format; give .pt, .onnx, .tflite or an OpenVINO .xml")
        target, info = path, None
        if MODEL_EXTENSIONS[path.suffix.lower()] == "pytorch" and not is_torchscript(path):
            loaded, info = load_model_file(path)
            target = Path(tmp) / "model.ts"
            save_torchscript(loaded, info.input_shape, target)
        check_model_file(path)
        dataset = _load_data(data, mean, std, info)
        npz = Path(tmp) / "eval.npz"
        write_eval_npz(dataset, dataset.test, npz)
        if device == "local-cpu":
            result = run_agent_local(target, npz, threads=threads, min_seconds=min_seconds)
        else:  # the same agent, on the device through its transport
            entries, _ = benchmark_on_device(profile, [model_job(target)], npz, threads=threads,
                                             min_seconds=min_seconds, strict=True)
            result = entries[0]
    size = Path(weights).stat().st_size if weights is not None else model_size(str(model))
    result.update({"model": shown, "size_bytes": size, "device": device})
    return result


@_api
def deploy(
    run_or_model: str | Path | Run,
    device: str,
    *,
    data: str = "mnist5k",
    threads: int | None = None,
    min_seconds: float | None = None,
    keep: bool = False,
    mean: Floats = None,
    std: Floats = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Copy deployable models and the agent to a device, benchmark them there; returns the device's entries.

    For a run (directory or Run) the entries are merged into its report.json and report.md; a single
    model file (.onnx, .tflite, an OpenVINO .xml with its .bin, TorchScript) is evaluated on `data`.
    `log` receives progress lines.
    """
    from edgecnn.devices.deploy import deploy as deploy_to
    from edgecnn.runtime.host import write_eval_npz

    target = run_or_model.run_dir if isinstance(run_or_model, Run) else Path(run_or_model)
    with tempfile.TemporaryDirectory(prefix="edgecnn-deploy-") as tmp:
        npz = None
        if target.is_file():
            dataset = _load_data(data, mean, std)
            npz = Path(tmp) / "eval.npz"
            write_eval_npz(dataset, dataset.test, npz)
        entries = deploy_to(target, device, npz=npz, threads=threads, min_seconds=min_seconds, keep=keep, log=log)
    if isinstance(run_or_model, Run):
        run_or_model.report = Run.load(target).report
    return entries


@_api
def compare(
    runs: Sequence[str | Path | Run],
    out: str | Path | None = None,
    *,
    max_latency_ms: float | None = None,
    max_size_kb: float | None = None,
    min_accuracy: float | None = None,
    device: str | None = None,
) -> dict:
    """Size / accuracy / latency rows and Pareto fronts across runs; with budgets, the best model.

    A run is a run directory, its report.json, a sweep directory (its variants) or a Run. With `out`,
    writes compare.json/.md/.html and one plot per device there. Returns compare.json's content
    (`rows`, and `budget` with `best` and `message` when budgets or a device are given).
    """
    from edgecnn.analysis.compare import compare_runs

    budget = _budget(max_latency_ms, max_size_kb, min_accuracy, device)
    paths = [r.run_dir if isinstance(r, Run) else Path(r) for r in runs]
    return compare_runs(paths, Path(out) if out is not None else None, budget)


@_api
def list_devices() -> list[dict]:
    """Every device profile (built-in and devices/*.yaml) and whether it is reachable now."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecnn.devices.profiles import list_profiles, reachability

    profiles = list_profiles()
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(reachability, profiles))
    return [
        {"name": p.name, "transport": p.transport, "target": p.target(), "runtimes": p.runtimes,
         "reachable": r is None, "reason": r, "profile": p.source, "description": p.description}
        for p, r in zip(profiles, reasons, strict=True)
    ]
