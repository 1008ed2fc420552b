"""Models the user names: an architecture spec + weights, a TorchScript file or an edgecnn model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Dataset
from edgecnn.models.files import (
    ModelInfo,
    build_model,
    is_torchscript,
    load_model_file,
    load_torchscript,
    load_weights,
)

MODEL_FILE_SUFFIXES = (".pt", ".ts", ".pth", ".torchscript", ".jit")


def data_model_info(data: Dataset, spec: str, kwargs: dict) -> ModelInfo:
    """The ModelInfo of an architecture spec trained on `data` (its classes, shape and normalisation)."""
    return ModelInfo(spec, dict(kwargs), data.num_classes, data.input_shape, data.mean, data.std)


def is_model_file(spec: str) -> bool:
    """True when a model spec names a saved model (TorchScript or edgecnn file) rather than an architecture."""
    return ".py:" not in spec and Path(spec).suffix.lower() in MODEL_FILE_SUFFIXES


def load_user_model(
    spec: str, kwargs: dict[str, Any], weights: str | None, data: Dataset, field: str = "teacher"
) -> tuple[nn.Module, ModelInfo | None]:
    """A trained model the user names in one of three ways, or an edgecnn model file.

    `file.py:Class` + kwargs + weights, `torchvision:NAME` (or a zoo name) + weights, a TorchScript
    file, or a file written by edgecnn. Returns the model (eval mode) and its ModelInfo (None for
    TorchScript, which cannot be rebuilt from a spec).
    """
    if is_model_file(spec):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{path}: {field}.model not found; check the path")
        if weights:
            raise UserError(
                f"{path}: {field}.model is a saved model, so {field}.weights does not apply; give "
                f"{field}.model: file.py:Class (or torchvision:NAME) to load a state_dict, or drop weights"
            )
        if is_torchscript(path):
            return load_torchscript(path).eval(), None
        try:
            return load_model_file(path)
        except UserError as e:
            raise UserError(
                f"{e}; {field}.model takes a TorchScript file or an edgecnn model file, and a state_dict goes "
                f"in {field}.weights with {field}.model: file.py:Class or torchvision:NAME"
            ) from None
    info = data_model_info(data, spec, kwargs)
    model = build_model(info)
    if weights:
        load_weights(model, Path(weights))
    return model.eval(), info
