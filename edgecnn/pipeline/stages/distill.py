"""Distill: train the small student from the teacher's soft targets (or on labels alone)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from edgecnn.compression.depth import BlockChoice, choose_blocks, cut_from_teacher
from edgecnn.compression.train import fit
from edgecnn.config.recipe import Recipe, recipe_dict, section_for_task
from edgecnn.core.progress import log
from edgecnn.models.files import ModelInfo, build_model, load_weights, save_model
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import decision_split, file_fingerprint, load_stage_model, measure_torch
from edgecnn.pipeline.stages.teacher import model_info


class DistillStage(Stage):
    name = "distill"
    reads = ("teacher",)
    data_reads = ("augment", "eval_samples")

    def enabled(self, recipe: Recipe) -> bool:
        s = recipe.student
        return s is not None and (s.model is not None or s.from_teacher is not None)

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        student = {k: v for k, v in r["student"].items() if k != "from_teacher" or v is not None}  # keys as before it
        if student.get("from_teacher") and student["from_teacher"]["max_params"] is None:
            student["from_teacher"] = {k: v for k, v in student["from_teacher"].items() if k != "max_params"}
        return {
            "student": student,
            "distill": section_for_task(recipe.distill, recipe.task),
            "train": r["train"],
            "files": [file_fingerprint(recipe.student.model), file_fingerprint(recipe.student.weights)],
        }

    def run(self, ctx: Context, out: Path) -> dict:
        s, kd = ctx.recipe.student, ctx.recipe.distill
        needs_teacher = kd is not None or s.from_teacher is not None
        teacher, t_info = load_stage_model(ctx, "teacher") if needs_teacher else (None, None)
        cut = None
        if s.from_teacher is not None:
            student, info, cut = self._cut_from_teacher(ctx, teacher, t_info)
        else:
            info = model_info(ctx, s.model, s.kwargs)
            student = build_model(info)
            if s.weights:
                load_weights(student, Path(s.weights))
        if kd is not None:
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
            **({"from_teacher": cut.to_dict()} if cut is not None else {}),
            "fit": {
                "epochs": res.epochs,
                "precision": res.precision,
                "images_per_s": res.images_per_s,
                "history": res.history,
                **({"teacher_runtime": res.teacher_runtime} if res.teacher_runtime else {}),
            },
            **measure_torch(ctx, student),
        }

    @staticmethod
    def _cut_from_teacher(ctx: Context, teacher: nn.Module, info: ModelInfo | None
                          ) -> tuple[nn.Module, ModelInfo, BlockChoice]:
        """The student as the teacher without its least needed blocks, ranked on validation images."""
        cfg = ctx.recipe.student.from_teacher
        choice = choose_blocks(teacher, ctx.data, decision_split(ctx).head(cfg.samples), ctx.task,
                               ctx.task.head_spec(teacher, ctx.data), cfg.keep_blocks, kd=ctx.recipe.distill,
                               max_params=cfg.max_params)
        log(f"distill: the student is the teacher without {len(choice.removed)} of its {len(choice.costs)} removable "
            f"blocks (kept: {', '.join(choice.kept) or 'none'}; {choice.params:,} parameters)")
        if len(choice.kept) < cfg.keep_blocks:
            log(f"[yellow]note:[/yellow] student.from_teacher: only {len(choice.kept)} of keep_blocks "
                f"{cfg.keep_blocks} fit under max_params {cfg.max_params:,}")
        return cut_from_teacher(teacher, choice), info, choice  # choose_blocks refused a TorchScript teacher
