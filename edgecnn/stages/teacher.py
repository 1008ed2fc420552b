"""Teacher: load the user's trained CNN (class + weights, torchvision + weights, TorchScript) or train one."""

from __future__ import annotations

from pathlib import Path

from edgecnn.errors import UserError
from edgecnn.models import ModelInfo, build_model, is_torchscript, load_torchscript, load_weights, save_model
from edgecnn.pipeline import Context, Stage
from edgecnn.recipe import Recipe, recipe_dict
from edgecnn.stages.common import file_fingerprint, measure_torch
from edgecnn.train import fit


def model_info(ctx: Context, spec: str, kwargs: dict) -> ModelInfo:
    d = ctx.data
    return ModelInfo(spec, dict(kwargs), d.num_classes, d.input_shape, d.mean, d.std)


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
        if t.model and Path(t.model).suffix in (".pt", ".ts", ".pth", ".torchscript") and ".py:" not in t.model:
            path = Path(t.model)
            if not path.is_file():
                raise UserError(f"{path}: teacher.model not found; check the path")
            if not is_torchscript(path):
                raise UserError(
                    f"{path}: teacher.model is not a TorchScript file; for a state_dict give "
                    "teacher.model: file.py:Class (or torchvision:NAME) and teacher.weights"
                )
            model = load_torchscript(path)
            return {"torchscript": str(path), "trained": False, **measure_torch(ctx, model)}
        info = model_info(ctx, t.model or "lenet", t.kwargs)
        model = build_model(info)
        trained = None
        if t.weights:
            load_weights(model, Path(t.weights))
        else:
            res = fit(model, ctx.data, ctx.recipe.train, seed=ctx.recipe.seed, augment=ctx.augment, label="teacher")
            trained = {
                "epochs": res.epochs,
                "precision": res.precision,
                "images_per_s": res.images_per_s,
                "history": res.history,
            }
        save_model(model, info, out / "model.pt")
        return {"model_file": "model.pt", "trained": trained, **measure_torch(ctx, model)}
