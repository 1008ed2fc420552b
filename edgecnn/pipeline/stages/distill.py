"""Distill: train the small student from the teacher's soft targets (or on labels alone)."""

from __future__ import annotations

from pathlib import Path

from edgecnn.compression.train import fit
from edgecnn.config.recipe import Recipe, recipe_dict, section_for_task
from edgecnn.models.files import build_model, load_weights, save_model
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import file_fingerprint, load_stage_model, measure_torch
from edgecnn.pipeline.stages.teacher import model_info


class DistillStage(Stage):
    name = "distill"
    reads = ("teacher",)
    data_reads = ("augment", "eval_samples")

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.student is not None and recipe.student.model is not None

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        return {
            "student": r["student"],
            "distill": section_for_task(recipe.distill, recipe.task),
            "train": r["train"],
            "files": [file_fingerprint(recipe.student.model), file_fingerprint(recipe.student.weights)],
        }

    def run(self, ctx: Context, out: Path) -> dict:
        s, kd = ctx.recipe.student, ctx.recipe.distill
        info = model_info(ctx, s.model, s.kwargs)
        student = build_model(info)
        if s.weights:
            load_weights(student, Path(s.weights))
        if kd is not None:
            teacher, _ = load_stage_model(ctx, "teacher")
            res = fit(
                student,
                ctx.data,
                kd,
                seed=ctx.recipe.seed,
                augment=ctx.augment,
                teacher=teacher,
                kd=kd,
                label="distill",
                task=ctx.task,
            )
        else:
            res = fit(student, ctx.data, ctx.recipe.train, seed=ctx.recipe.seed, augment=ctx.augment, label="student",
                      task=ctx.task)
        save_model(student, info, out / "model.pt")
        return {
            "model_file": "model.pt",
            "distilled": kd is not None,
            "fit": {
                "epochs": res.epochs,
                "precision": res.precision,
                "images_per_s": res.images_per_s,
                "history": res.history,
                **({"teacher_runtime": res.teacher_runtime} if res.teacher_runtime else {}),
            },
            **measure_torch(ctx, student),
        }
