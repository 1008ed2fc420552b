"""Export: ONNX, TFLite and OpenVINO fp32 of the compressed model, each gated on parity with its PyTorch source.

The ONNX file is optionally simplified (export.simplify) before the gate, so the gate checks the
file that ships; the OpenVINO IR (model.xml + model.bin) is converted from that ONNX file. Parity
is the task's (Task.parity: top-1 agreement, or a detector's confident detections matched by IoU),
run in the real runtime: the gate decides on the validation split; the parity and score reported
are the test split's.
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.openvino_ir import export_openvino
from edgecnn.config.recipe import Recipe, recipe_dict
from edgecnn.core.errors import StageFailed
from edgecnn.core.progress import log
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import (
    DECISION_SPLIT,
    decision_split,
    eval_split,
    load_stage_model,
    reference_fields,
    score_fields,
)
from edgecnn.pipeline.stages.naming import model_name
from edgecnn.runtime.host import parity, runtime_outputs
from edgecnn.tasks.base import raw_outputs

EXPORTERS = {
    "onnx": ("model.onnx", export_onnx),
    "tflite": ("model.tflite", export_tflite),
    "openvino": ("model.xml", export_openvino),  # and model.bin
}


def gate(ok: bool, message: str, on_fail: str) -> None:
    """Fail the run (or warn) when a parity or accuracy check does not hold."""
    if ok:
        return
    if on_fail == "error":
        raise StageFailed(message + "; set on_fail: warn to keep the model anyway")
    log(f"[yellow]warning:[/yellow] {message}")


class ExportStage(Stage):
    name = "export"
    reads = ("teacher", "distill", "prune")
    data_reads = ("eval_samples",)

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.export is not None and bool(recipe.export.formats)

    def config(self, recipe: Recipe) -> dict:
        return recipe_dict(recipe)["export"]

    def run(self, ctx: Context, out: Path) -> dict:
        cfg, task = ctx.recipe.export, ctx.task
        source, _ = ctx.latest_model()
        model, _ = load_stage_model(ctx, source)
        head = task.head_spec(model, ctx.data)
        splits = {DECISION_SPLIT: decision_split(ctx), "test": eval_split(ctx)}
        ref = {k: raw_outputs(model, ctx.data, split) for k, split in splits.items()}
        reference = f"{model_name(ctx, source)}/pytorch"
        files = {}
        for fmt in cfg.formats:
            name, exporter = EXPORTERS[fmt]
            args = {"onnx": (cfg.opset, cfg.simplify), "openvino": (cfg.opset, cfg.simplify, out / "model.onnx")}
            exporter(model, ctx.data.input_shape, out / name, *args.get(fmt, ()))
            raws = {k: runtime_outputs(out / name, ctx.data, split) for k, split in splits.items()}
            checks = {k: parity(task, raws[k], ref[k], splits[k], head, reference) for k in splits}
            agree = checks[DECISION_SPLIT]["agreement"]
            gate(
                agree >= cfg.min_agreement,
                f"{fmt} fp32 export agrees with PyTorch on {agree:.2%} of the validation {task.agreement_of}, "
                f"below export.min_agreement {cfg.min_agreement:.2%}",
                cfg.on_fail,
            )
            files[fmt] = {
                "file": name,
                **score_fields(ctx, raws, splits, head),
                "parity": checks["test"],
                "val_parity": checks[DECISION_SPLIT],
                "gate": {"min_agreement": cfg.min_agreement, "agreement": agree, "split": DECISION_SPLIT,
                         "passed": agree >= cfg.min_agreement},
            }
        return {
            "source": source,
            "files": files,
            "decision_split": DECISION_SPLIT,
            **reference_fields(score_fields(ctx, ref, splits, head)),
        }
