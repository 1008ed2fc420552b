"""The recipe: YAML validated into typed, frozen config objects, with `--set` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming the key.
Relative paths in the recipe resolve against the recipe's folder; `--set` values against the
current directory.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecnn.core.errors import UserError

# "auto", "true" or "false"; YAML's true/false booleans are read as those words
AutoBool = Annotated[
    Literal["auto", "true", "false"], BeforeValidator(lambda v: str(v).lower() if isinstance(v, bool) else v)
]


Pixels = Annotated[int, Field(ge=1, le=8192)]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(Section):
    spec: str = "mnist5k"
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: Literal["none", "cifar", "auto"] = Field(
        "auto", description="auto: CIFAR crop+flip on 32x32 RGB (classification), box-moving jitter (detection)"
    )
    eval_samples: int | None = Field(None, ge=1, description="limit the test split (None: all)")
    calib_samples: int = Field(256, ge=1, le=100_000)
    image_size: Pixels | tuple[Pixels, Pixels] | None = Field(
        None, description="image folders: resize each image to cover [height, width] (or N x N), crop the centre; "
        "detection: letterbox every image to N x N"
    )
    sigmas: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(
        None, min_length=1, description="keypoints: the OKS sigma of each keypoint (None: the data's, else 0.05 each)"
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


class TrainConfig(Section):
    """Training hyper-parameters shared by every stage that trains."""

    epochs: int = Field(8, ge=0, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True


class ModelSpec(Section):
    """A model: `file.py:Class`, `torchvision:name`, a zoo name, or a TorchScript file."""

    model: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None


class TeacherConfig(ModelSpec):
    pass


class FromTeacher(Section):
    """A student cut from the teacher by depth pruning (compression/depth.py): its weights are the teacher's."""

    keep_blocks: int = Field(ge=0, le=10_000, description="removable blocks kept: those whose removal alone "
                             "costs most on validation data; blocks that change the shape always stay")
    samples: int = Field(1000, ge=1, le=100_000, description="validation images the blocks are ranked on")
    max_params: int | None = Field(None, ge=1, description="the student's parameter cap: a block that would "
                                   "take it over is passed over for the next costliest that fits")


class StudentConfig(ModelSpec):
    model: str | None = "lenet"
    from_teacher: FromTeacher | None = Field(None, description="the teacher without its least needed blocks, "
                                             "instead of student.model")

    @model_validator(mode="before")
    @classmethod
    def _no_default_model_from_teacher(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("from_teacher") is not None and "model" not in v:
            return {**v, "model": None}
        return v

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if self.from_teacher is not None and (self.model is not None or self.kwargs or self.weights):
            raise ValueError("from_teacher builds the student from the teacher; remove student.model, "
                             "student.kwargs and student.weights")
        return self


class DistillConfig(TrainConfig):
    epochs: int = Field(10, ge=0, le=10_000)
    temperature: float = Field(4.0, gt=0, le=100, json_schema_extra={"tasks": ["classification", "detection"]},
                               description="softens the logits (heatmap distillation has none)")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft-target loss")
    feature_loss: Literal["none", "attention", "hints"] = "none"
    teacher_runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="where the frozen teacher runs; auto: OpenVINO on a CPU where it can stand in exactly "
        "(a one-tensor output, no feature loss), else PyTorch")
    feature_weight: float | None = Field(None, ge=0, description="None: the loss's usual weight (1000 / 1)")
    peak_weight: float = Field(0.0, ge=0, le=1000, json_schema_extra={"tasks": ["keypoints"]},
                               description="keypoints: a cell weighs 1 + this x the teacher's "
                               "heatmap value in the distillation loss (0: plain MSE)")


class PruneConfig(TrainConfig):
    epochs: int = Field(4, ge=0, le=10_000, description="fine-tuning epochs after the last step")
    lr: float = Field(0.01, gt=0, le=10)
    ratio: float | None = Field(0.3, ge=0, lt=1, description="fraction of channels removed")
    macs_reduction: float | None = Field(None, ge=1, description="e.g. 2 for 2x fewer MACs")
    params_budget: int | None = Field(None, ge=1)
    latency_budget_ms: float | None = Field(None, gt=0, description="batch-1 p50 on latency_device, measured")
    latency_device: str = "local-cpu"
    latency_threads: int = Field(1, ge=0, le=256, description="threads when timing (0: all cores)")
    importance: Literal["magnitude", "bn_scale", "taylor"] = "magnitude"
    global_pruning: bool = False
    iterative_steps: int = Field(1, ge=1, le=100)
    round_to: int | None = Field(None, ge=1, le=256)
    ignored_layers: list[str] = Field(default_factory=list)
    distill: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        targets = [self.macs_reduction, self.params_budget, self.latency_budget_ms]
        if sum(t is not None for t in targets) > 1:
            raise ValueError("give only one of macs_reduction, params_budget or latency_budget_ms")
        return self


class OnnxQuantConfig(Section):
    format: Literal["qdq", "qoperator"] = "qdq"
    activation: Literal["uint8", "int8"] = "uint8"
    weight: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    reduce_range: AutoBool = "auto"


class TfliteQuantConfig(Section):
    io: Literal["int8", "float"] = "int8"
    per_channel: bool = True


class OpenvinoQuantConfig(Section):
    """OpenVINO files beside the fp32 IR: int8 through NNCF post-training quantization, reduced float precisions."""

    enabled: bool = True
    preset: Literal["performance", "mixed"] = "performance"
    subset_size: int | None = Field(None, ge=1, le=100_000, description="calibration images NNCF uses (None: all)")
    fast_bias_correction: bool = True
    inference_precisions: list[Literal["bf16", "fp16"]] = Field(default_factory=lambda: ["bf16", "fp16"])


class QatConfig(Section):
    """Quantization-aware training, the fallback when post-training int8 misses the budget."""

    enabled: AutoBool = "auto"
    epochs: int = Field(2, ge=1, le=1000)
    lr: float = Field(0.001, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=65_536)


class QuantizeConfig(Section):
    enabled: bool = True
    select: Literal["auto", "fixed"] = "auto"
    onnx: OnnxQuantConfig = OnnxQuantConfig()
    tflite: TfliteQuantConfig = TfliteQuantConfig()
    openvino: OpenvinoQuantConfig = OpenvinoQuantConfig()
    accuracy_budget: float = Field(0.01, ge=0, le=1, description="max top-1 loss of int8, 0..1")
    on_fail: Literal["error", "warn"] = "error"
    qat: QatConfig = QatConfig()
    fallback: Literal["auto", "none"] | list[str] = Field(
        "auto", description="layers kept in float: auto (the fewest most sensitive, when full int8 misses the "
        "budget), none, or a list of module names"
    )
    sensitivity: bool = Field(False, description="measure each layer's int8 sensitivity even when int8 meets budget")

    @field_validator("fallback")
    @classmethod
    def _layer_list(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or any(not n.strip() for n in v) or len(set(v)) != len(v)):
            raise ValueError("give auto, none or a non-empty list of distinct module names, e.g. [features.0]")
        return v


class ExportConfig(Section):
    formats: list[Literal["onnx", "tflite", "openvino"]] = Field(default_factory=lambda: ["onnx", "tflite", "openvino"])
    opset: int = Field(18, ge=17, le=23)
    simplify: bool = True
    min_agreement: float = Field(0.995, ge=0, le=1, description="fp32 parity gate on top-1")
    on_fail: Literal["error", "warn"] = "error"


class BenchConfig(Section):
    device: str = "local-cpu"
    threads: int = Field(1, ge=0, le=256, description="0: all cores")
    warmup: int = Field(10, ge=0, le=100_000)
    min_iters: int = Field(50, ge=1, le=1_000_000)
    min_seconds: float = Field(1.0, ge=0, le=3600)
    max_size_kb: float | None = Field(
        None, gt=0, description="the deployed file's size limit in KB (1,024 bytes): larger files are measured "
        "and listed, never deployed"
    )


class SweepConfig(Section):
    """Variants of the recipe: a grid of dotted keys to value lists, and/or a list of key-to-value mappings.

    With both, every list entry is combined with every grid point. A list entry may carry a `name`.
    """

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    workers: int | None = Field(None, ge=1, le=1024, description="parallel variants (None: the machine's cores)")

    @model_validator(mode="after")
    def _something(self) -> SweepConfig:
        if not self.grid and not self.variants:
            raise ValueError("give sweep.grid (key: [values]) and/or sweep.variants (a list of {key: value})")
        for key, values in self.grid.items():
            if not key.strip(".") or not values:
                raise ValueError(f"grid key {key!r} needs a non-empty list of values")
            if key.split(".")[0] in ("sweep", "name"):
                raise ValueError(f"grid key {key!r}: a sweep cannot vary {key.split('.')[0]}")
        for i, v in enumerate(self.variants):
            if not any(k != "name" for k in v):
                raise ValueError(f"variants[{i}] sets no key; give e.g. {{prune.ratio: 0.5}}")
        return self


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    task: Literal["classification", "detection", "keypoints"] = "classification"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    train: TrainConfig = TrainConfig()
    student: StudentConfig | None = StudentConfig()
    distill: DistillConfig | None = DistillConfig()
    prune: PruneConfig | None = PruneConfig()
    quantize: QuantizeConfig | None = QuantizeConfig()
    export: ExportConfig | None = ExportConfig()
    bench: BenchConfig = BenchConfig()
    sweep: SweepConfig | None = None

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sigmas_need_keypoints(self) -> Recipe:
        if self.data.sigmas is not None and self.task != "keypoints":
            raise ValueError(f"data.sigmas: only the keypoints task has OKS sigmas (task is {self.task}); remove it "
                             "or set task: keypoints")
        return self


STAGE_SECTIONS = ("teacher", "train", "student", "distill", "prune", "quantize", "export", "bench")
PATH_KEYS = {("teacher", "model"), ("teacher", "weights"), ("student", "model"), ("student", "weights")}


def _parse_value(text: str) -> Any:
    """A `--set` value, read as YAML (so `2`, `true`, `[a, b]` and `null` work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `key.path=value` assignment (`--set`, value read as YAML) to the raw recipe mapping, in place."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set distill.epochs=2")
    key, _, text = assignment.partition("=")
    set_dotted(raw, key, _parse_value(text), Path.cwd())


def set_dotted(raw: dict, key: str, value: Any, base: Path, where: str = "--set") -> None:
    """Set `value` at the dotted `key` of a raw recipe mapping, in place; a path value resolves against `base`.

    `where` names the source in errors (`--set`, `sweep:`, an API argument).
    """
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"{where} {key!r}: empty key; e.g. --set distill.epochs=2")
    node = raw
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if p == "data" and isinstance(node[p], str):
            node[p] = {"spec": node[p]}
        if not isinstance(node[p], dict):
            raise UserError(f"{where} {key.strip()}: {p!r} is not a section")
        node = node[p]
    is_path = (parts[0], parts[-1]) in PATH_KEYS | {("data", "spec")} or parts == ["data"]
    if is_path and isinstance(value, str):
        value = _absolutize(value, base)
    node[parts[-1]] = value


def _absolutize(value: str, base: Path) -> str:
    """Resolve a relative path (or the PATH of a `kind:PATH` data spec / `file.py:Class`)."""
    if value.startswith(("torchvision:", "zoo:")) or value in ("mnist5k", "mnist-detect", "mnist-keypoints"):
        return value
    prefix = ""
    for kind in ("imagefolder:", "cifar10:", "coco-keypoints:", "coco:", "yolo:"):
        if value.startswith(kind):
            prefix, value = kind, value[len(kind) :]
    suffix = ""
    if ".py:" in value:
        value, _, cls = value.partition(".py:")
        value, suffix = value + ".py", ":" + cls
    if "/" not in value and not value.endswith((".py", ".pt", ".ts", ".pth")) and not prefix:
        return prefix + value + suffix  # a zoo name, not a path
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base / p
    # normalized (no `..`): the same file gives the same stage keys from any checkout; symlinks stay as the user
    # wrote them, so messages name the path they gave
    return prefix + os.path.normpath(p) + suffix


def validation_message(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key; see recipes/template.yaml for every key"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


def load_recipe(path: str | Path, overrides: Overrides = ()) -> Recipe:
    """Read, override and validate a recipe file; bad input raises UserError naming the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the recipe ({e.__class__.__name__}); give a UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a recipe; fix the file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UserError(f"{path}: malformed YAML{at}; fix the syntax") from None
    if raw is None:
        raise UserError(f"{path}: the recipe is empty (no YAML, or only comments); give at least `data:`, "
                        "e.g. copy recipes/quickstart.yaml")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections (name, data, teacher, ...)")
    return recipe_from_dict(raw, base=path.resolve().parent, overrides=overrides, source=str(path))


Overrides = Sequence[str] | Mapping[str, Any]
"""`--set` assignments (`KEY=VALUE`, the value read as YAML) or a mapping of dotted keys to values."""


def resolve_paths(raw: dict, base: Path) -> dict:
    """A copy of a raw recipe mapping with its relative paths (models, weights, data) resolved against `base`."""
    raw = copy.deepcopy(raw)
    if isinstance(raw.get("data"), str):
        raw["data"] = {"spec": raw["data"]}
    for section, key in PATH_KEYS | {("data", "spec")}:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            sec[key] = _absolutize(sec[key], base)
    return raw


def apply_overrides(raw: dict, overrides: Overrides) -> None:
    """Apply overrides to a raw recipe mapping in place (paths in values resolve against the current directory)."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(raw, str(key), value, Path.cwd())
        return
    for assignment in overrides:
        apply_override(raw, assignment)


def recipe_from_dict(raw: dict, base: Path, overrides: Overrides = (), source: str = "recipe") -> Recipe:
    """Validate a raw mapping (paths relative to `base`), after applying overrides."""
    raw = resolve_paths(raw, base)
    apply_overrides(raw, overrides)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None


def recipe_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain JSON-able data (for reports and stage hashes)."""
    return recipe.model_dump(mode="json")


def section_for_task(section: BaseModel | None, task: str) -> dict | None:
    """A section as JSON-able data without the fields of other tasks (`json_schema_extra={"tasks": [...]}`).

    Stage keys hash this, so a keypoints-only field never redoes a classification stage.
    """
    if section is None:
        return None
    data = section.model_dump(mode="json")
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra
        tasks = extra.get("tasks") if isinstance(extra, dict) else None
        if tasks is not None and task not in tasks:
            data.pop(name, None)
    return data
