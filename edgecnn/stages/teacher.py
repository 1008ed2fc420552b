"""Teacher: load the user's trained CNN (class + weights, torchvision + weights, TorchScript) or train one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecnn.data import Dataset
from edgecnn.errors import UserError
from edgecnn.models import (
    ModelInfo,
    build_model,
    is_torchscript,
    load_model_file,
    load_torchscript,
    load_weights,
    save_model,
)
from edgecnn.pipeline import Context, Stage
from edgecnn.recipe import Recipe, recipe_dict
from edgecnn.stages.common import file_fingerprint, measure_torch
from edgecnn.train import fit

MODEL_FILE_SUFFIXES = (".pt", ".ts", ".pth", ".torchscript", ".jit")


def model_info(ctx: Context, spec: str, kwargs: dict) -> ModelInfo:
    return data_model_info(ctx.data, spec, kwargs)


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


class TeacherStage(Stage):
    name = "teacher"

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        t = recipe.teacher
        return {
            "teacher": r["teacher"],
            "train": r["train"],
            "files": [file_fingerprint(t.model), file_fingerprint(t.weights)],
        }

    def run(self, ctx: Context, out: Path) -> dict:
        t = ctx.recipe.teacher
        if t.model and is_model_file(t.model):
            model, info = load_user_model(t.model, t.kwargs, t.weights, ctx.data)
            if info is None:
                return {"torchscript": t.model, "trained": None, **measure_torch(ctx, model)}
            save_model(model, info, out / "model.pt")
            return {"model_file": "model.pt", "trained": None, **measure_torch(ctx, model)}
        model, info = load_user_model(t.model or "lenet", t.kwargs, t.weights, ctx.data)
        trained = None
        if not t.weights:
            res = fit(model, ctx.data, ctx.recipe.train, seed=ctx.recipe.seed, augment=ctx.augment, label="teacher")
            trained = {
                "epochs": res.epochs,
                "precision": res.precision,
                "images_per_s": res.images_per_s,
                "history": res.history,
            }
        save_model(model, info, out / "model.pt")
        return {"model_file": "model.pt", "trained": trained, **measure_torch(ctx, model)}
