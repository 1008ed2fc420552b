"""Build, load, save and measure models.

A model is named by a spec: a zoo name (`lenet`, `cifar_resnet20`), `torchvision:NAME`, a user's
`path/to/file.py:ClassName` (Python code: loading it runs it, which the user asked for by naming
it), or a TorchScript file (`.pt`/`.ts`, also code). Weights load only with
`torch.load(weights_only=True)`.

edgecnn's own model files (`*.pt` written by a stage) hold the spec, every layer's shape
attributes (channels, features, groups) and the state_dict, all plain data: a fresh process
rebuilds a pruned model without re-running the pruning and loads it with weights_only=True. A
student cut from its teacher's blocks (depth pruning) also lists the blocks it lacks.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecnn.core.artifacts import atomic_write_bytes
from edgecnn.core.errors import UserError
from edgecnn.models.blocks import remove_blocks, removed_blocks
from edgecnn.models.zoo import ZOO

FORMAT_TAG = "edgecnn-model/1"


@dataclass
class ModelInfo:
    """How to rebuild a model: its spec, constructor arguments and the data it expects."""

    spec: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "kwargs": self.kwargs,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        return cls(
            d["spec"],
            dict(d.get("kwargs", {})),
            int(d["num_classes"]),
            tuple(d["input_shape"]),
            list(d.get("mean", [])),
            list(d.get("std", [])),
        )


def is_torchscript(path: Path) -> bool:
    """True when `path` is a TorchScript archive (a zip with a code/ folder)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_class(spec: str) -> type:
    file, _, cls_name = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise UserError(f"{path}: model file not found; check teacher/student.model")
    mod_name = f"edgecnn_user_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        module = sys.modules[mod_name]
    else:
        try:
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - user code failing to import is bad input
            sys.modules.pop(mod_name, None)
            raise UserError(f"{path}: importing the model file failed ({e.__class__.__name__}: {e})") from None
    cls = getattr(module, cls_name, None)
    if cls is None or not callable(cls):
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)]
        raise UserError(f"{path}: no class {cls_name!r}; it defines {', '.join(names) or 'no nn.Module'}")
    return cls


def build_model(info: ModelInfo) -> nn.Module:
    """Instantiate the architecture named by `info.spec` (no weights)."""
    # zero-width layers from bad kwargs are reported by preflight.check_forward in one line; torch's warning is noise
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return _build(info)


def _build(info: ModelInfo) -> nn.Module:
    spec, kwargs = info.spec, dict(info.kwargs)
    c, h, _ = info.input_shape
    try:
        if spec in ZOO:
            return ZOO[spec](num_classes=info.num_classes, in_channels=c, image_size=h, **kwargs)
        if spec.startswith("torchvision:"):
            import torchvision

            name = spec.split(":", 1)[1]
            if name not in torchvision.models.list_models():
                raise UserError(f"model {spec!r}: torchvision has no such architecture")
            kwargs.setdefault("num_classes", info.num_classes)
            return torchvision.models.get_model(name, weights=None, **kwargs)
        if ".py:" in spec:
            return _load_class(spec)(**kwargs)
    except UserError:
        raise
    except TypeError as e:
        raise UserError(f"model {spec!r}: bad kwargs {kwargs} ({e}); fix teacher/student.kwargs") from None
    except ValueError as e:
        raise UserError(f"model {spec!r}: {e}") from None
    except (RuntimeError, ArithmeticError, AttributeError, IndexError, KeyError, AssertionError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(
            f"model {spec!r}: building it with kwargs {kwargs} failed ({e.__class__.__name__}: {first}); "
            "fix teacher/student.kwargs"
        ) from None
    raise UserError(
        f"model {spec!r} is unknown; use one of {', '.join(ZOO)}, torchvision:NAME, "
        "path/to/file.py:ClassName or a TorchScript file"
    )


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; check the path")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle_errors() as e:
        raise UserError(
            f"{path}: unreadable checkpoint: {checkpoint_problem(e)}; edgecnn loads weights only "
            "(torch.load weights_only=True), save a state_dict with torch.save(model.state_dict(), path)"
        ) from None


def checkpoint_problem(e: BaseException) -> str:
    """What a failed torch.load(weights_only=True) says, in a few words: pickled code, or a broken file."""
    text = str(e)
    found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles Python objects ({found.group(1)}), which weights_only=True refuses"
    broken = ("Unsupported operand", "invalid load key", "zip archive", "central directory", "truncated", "EOF")
    if isinstance(e, (EOFError, zipfile.BadZipFile)) or any(b in text for b in broken):
        return "the file is corrupt, truncated or not a PyTorch checkpoint"
    return f"{e.__class__.__name__}: {text.splitlines()[0][:160] if text else ''}"


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle

    return (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        AttributeError,
        ImportError,
        TypeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        zipfile.BadZipFile,
        struct.error,
        ArithmeticError,
        NotImplementedError,
        RecursionError,
    )


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict file into `model` strictly; a mismatch names the first bad keys."""
    sd = _unwrap_state_dict(_read_checkpoint(path), path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {tuple(sd[k].shape)}, model wants {tuple(own[k].shape)}")
        raise UserError(f"{path}: does not fit the model ({'; '.join(parts)}); check model and kwargs")
    model.load_state_dict(sd)


def load_torchscript(path: Path) -> nn.Module:
    """Load a TorchScript file (code the user named explicitly)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript; users still have it
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a corrupt archive is bad input
        raise UserError(f"{path}: not a loadable TorchScript file ({e.__class__.__name__})") from None


SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "num_groups",
    "normalized_shape",
    "embed_dim",
    "num_heads",
)


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The shape attributes (channels, features, groups) of every layer: what pruning changes."""
    shapes = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), (int, tuple))}
        if attrs:
            shapes[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
    return shapes


def _reshape_to(model: nn.Module, state: dict[str, torch.Tensor], shapes: dict[str, dict[str, Any]]) -> None:
    """Resize a freshly built model's layers to a (pruned) state_dict, so it loads strictly."""
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        m = modules.get(name)
        if m is None:
            raise KeyError(name)
        for k, v in attrs.items():
            setattr(m, k, tuple(v) if isinstance(v, list) else v)
    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        m = modules.get(mod_name)
        if m is None:
            continue
        if attr in m._parameters and m._parameters[attr] is not None:
            if m._parameters[attr].shape != tensor.shape:
                m._parameters[attr] = nn.Parameter(torch.empty_like(tensor), m._parameters[attr].requires_grad)
        elif attr in m._buffers and m._buffers[attr] is not None and m._buffers[attr].shape != tensor.shape:
            m._buffers[attr] = torch.empty_like(tensor)


def save_model(model: nn.Module, info: ModelInfo, path: Path) -> None:
    """Save an edgecnn model file atomically: spec, every layer's shape and the state_dict (tensors only)."""
    payload = {
        "format": FORMAT_TAG,
        "info": info.to_dict(),
        "shapes": layer_shapes(model),
        "removed": removed_blocks(model),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    atomic_write_bytes(path, torch_bytes(lambda f: torch.save(payload, f)))


def torch_bytes(save: Any) -> bytes:
    """What a torch writer (`torch.save`, `torch.jit.save`) produces, serialised in memory.

    Their C++ zip writer aborts the whole process when a disk fills mid-write; writing the finished
    bytes from Python instead turns a full disk into an ordinary OSError (ENOSPC).
    """
    import io

    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


def load_model_file(path: Path) -> tuple[nn.Module, ModelInfo]:
    """Load an edgecnn model file in a fresh process: rebuild, reshape pruned layers, load weights."""
    obj = _read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_TAG:
        raise UserError(f"{path}: not an edgecnn model file; give a file written by edgecnn (e.g. RUN/prune/model.pt)")
    try:
        info = ModelInfo.from_dict(obj["info"])
        state, shapes = obj["state_dict"], obj["shapes"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: damaged edgecnn model file (missing fields); regenerate it") from None
    model = build_model(info)
    try:
        remove_blocks(model, list(obj.get("removed", [])))
        _reshape_to(model, state, shapes)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: its weights do not fit {info.spec} ({e.__class__.__name__}); regenerate it") from None
    return model.eval(), info


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and parameters of one forward pass at batch 1 (Torch-Pruning's counter)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return int(macs), int(params)
