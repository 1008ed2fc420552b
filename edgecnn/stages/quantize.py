"""Quantize: int8 ONNX (onnxruntime static, from the fp32 export) and int8 TFLite (litert-torch PT2E).

Calibration uses the first `data.calib_samples` real training images. Each int8 model is gated
on accuracy: it may lose at most `quantize.accuracy_budget` against its fp32 PyTorch source.
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.export import quantize_onnx, quantize_tflite
from edgecnn.pipeline import Context, Stage
from edgecnn.recipe import Recipe, recipe_dict
from edgecnn.runtimes import parity, runtime_logits
from edgecnn.stages.common import eval_split, load_stage_model
from edgecnn.stages.export import gate
from edgecnn.stages.naming import model_name
from edgecnn.train import accuracy, predict


class QuantizeStage(Stage):
    name = "quantize"
    reads = ("teacher", "distill", "prune", "export")

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.quantize is not None and recipe.quantize.enabled and recipe.export is not None

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        return {"quantize": r["quantize"], "formats": r["export"]["formats"], "calib": recipe.data.calib_samples}

    def run(self, ctx: Context, out: Path) -> dict:
        cfg = ctx.recipe.quantize
        source, _ = ctx.latest_model()
        model, _ = load_stage_model(ctx, source)
        calib = ctx.data.normalize(ctx.data.train.x[: ctx.recipe.data.calib_samples])
        split = eval_split(ctx)
        ref = predict(model, ctx.data, split)
        ref_acc = accuracy(ref, split.y)
        files = {}
        for fmt in ctx.recipe.export.formats:
            if fmt == "onnx":
                name = "model.int8.onnx"
                o = cfg.onnx
                quantize_onnx(
                    ctx.stage_dir("export") / "model.onnx",
                    out / name,
                    calib.numpy(),
                    fmt=o.format,
                    activation=o.activation,
                    weight=o.weight,
                    per_channel=o.per_channel,
                    method=o.method,
                )
            else:
                name = "model.int8.tflite"
                quantize_tflite(model, ctx.data.input_shape, calib, out / name, per_channel=cfg.tflite.per_channel)
            acc, logits = runtime_logits(out / name, ctx.data, split)
            gate(
                ref_acc - acc <= cfg.accuracy_budget,
                f"{fmt} int8 loses {100 * (ref_acc - acc):.2f} points against fp32 PyTorch "
                f"(budget quantize.accuracy_budget={cfg.accuracy_budget})",
                cfg.on_fail,
            )
            files[fmt] = {
                "file": name,
                "accuracy": acc,
                "reference_accuracy": ref_acc,
                "parity": parity(logits, ref.numpy(), f"{model_name(ctx, source)}/pytorch"),
            }
        return {"source": source, "files": files}
