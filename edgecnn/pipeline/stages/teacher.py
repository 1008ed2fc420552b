"""Teacher: load the user's trained CNN (class + weights, torchvision + weights, TorchScript) or train one."""

from __future__ import annotations

from pathlib import Path

from edgecnn.compression.train import fit
from edgecnn.config.recipe import Recipe, recipe_dict
from edgecnn.models.files import ModelInfo, save_model
from edgecnn.models.user import data_model_info, is_model_file, load_user_model
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import file_fingerprint, measure_torch

DEFAULT_TEACHERS = {"classification": "lenet", "detection": "det_small", "keypoints": "pose_small"}


def model_info(ctx: Context, spec: str, kwargs: dict) -> ModelInfo:
    return data_model_info(ctx.data, spec, kwargs)


def default_teacher(task: str) -> str:
    """The zoo model a teacher without `model` is built from: the task's (lenet, det_small)."""
    return DEFAULT_TEACHERS[task]


class TeacherStage(Stage):
    name = "teacher"
    data_reads = ("augment", "eval_samples")

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
        model, info = load_user_model(t.model or default_teacher(ctx.recipe.task), t.kwargs, t.weights, ctx.data)
        trained = None
        if not t.weights:
            res = fit(model, ctx.data, ctx.recipe.train, seed=ctx.recipe.seed, augment=ctx.augment, label="teacher",
                      task=ctx.task)
            trained = {
                "epochs": res.epochs,
                "precision": res.precision,
                "images_per_s": res.images_per_s,
                "history": res.history,
            }
        save_model(model, info, out / "model.pt")
        return {"model_file": "model.pt", "trained": trained, **measure_torch(ctx, model)}
