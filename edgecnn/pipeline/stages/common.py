"""Helpers the stages share: loading earlier stages' models, the decision and test splits, PyTorch scores.

Choices are made on the validation split (`decision_split`); reported figures use the test split
(`eval_split`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn as nn

from edgecnn.analysis.stats import classification_fields
from edgecnn.core.artifacts import file_sha256
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Split
from edgecnn.models.files import ModelInfo, count_macs_params, load_model_file, load_torchscript
from edgecnn.pipeline.context import Context
from edgecnn.tasks.base import raw_outputs


def file_fingerprint(path: str | None) -> str | None:
    """Hash of a user file named in the recipe (part of a stage key), None when not a file."""
    if path and ".py:" in path:
        path = path.split(".py:")[0] + ".py"
    if path and Path(path).is_file():
        return file_sha256(path)
    return None


def measurement_config(bench: dict) -> dict:
    """The bench section's timing settings (what a stage's measurements depend on), without the deploy limits."""
    return {k: v for k, v in bench.items() if k != "max_size_kb"}


def load_stage_model(ctx: Context, stage: str) -> tuple[nn.Module, ModelInfo | None]:
    """The PyTorch model a finished stage produced (a TorchScript teacher has no ModelInfo)."""
    r = ctx.results[stage]
    if r.get("torchscript"):
        return load_torchscript(Path(r["torchscript"])).eval(), None
    return load_model_file(ctx.stage_dir(stage) / r["model_file"])


DECISION_SPLIT = "val"
"""The split every choice is scored on (int8 candidate, accuracy and parity gates, QAT, deploy)."""
SUFFIX = {"onnx": "onnx", "tflite": "tflite", "openvino": "xml"}
"""The file suffix of each deploy format (an OpenVINO IR's .bin travels with its .xml)."""


def eval_split(ctx: Context) -> Split:
    """The split of every reported figure: the test split, limited by data.eval_samples."""
    return ctx.data.test.head(ctx.recipe.data.eval_samples)


def decision_split(ctx: Context) -> Split:
    """The split every choice is scored on: the validation split (never the test split)."""
    if len(ctx.data.val) == 0:
        raise UserError(
            f"data: {ctx.recipe.data.spec} has no validation images (data.val_fraction is 0 and there is no val/ "
            "folder), and export and quantize decide on validation data; set data.val_fraction (e.g. 0.1)"
        )
    return ctx.data.val


def task_fields(ctx: Context, metrics: dict, n: int) -> dict:
    """A model entry's `task`, `score` and `metrics` (classification: `accuracy` and its 95% interval too)."""
    if ctx.recipe.task == "classification":
        return {"accuracy": metrics["top1"], **classification_fields(metrics["top1"], n)}
    return {"task": ctx.recipe.task, "score": ctx.task.score(metrics), "metrics": metrics}


def scored(ctx: Context, raw: np.ndarray, split: Split, head: dict) -> dict:
    """task_fields of raw outputs on a split."""
    return task_fields(ctx, ctx.task.evaluate(raw, split.y, head), len(split))


def score_fields(ctx: Context, raw: dict[str, np.ndarray], splits: dict[str, Split], head: dict) -> dict:
    """A file's scores from its raw outputs on the decision and test splits: `score`, `val_score`, `metrics`
    (test) and, for classification, `accuracy` and `val_accuracy`."""
    metrics = {k: ctx.task.evaluate(raw[k], split.y, head) for k, split in splits.items()}
    out = {"score": ctx.task.score(metrics["test"]), "val_score": ctx.task.score(metrics[DECISION_SPLIT]),
           "metrics": metrics["test"]}
    if ctx.recipe.task == "classification":
        out.update(accuracy=out["score"], val_accuracy=out["val_score"])
    return out


def reference_fields(fields: dict) -> dict:
    """score_fields of the PyTorch reference, each key prefixed `reference_`."""
    return {f"reference_{k}": v for k, v in fields.items() if k != "metrics"}


def decision_score(record: dict, prefix: str = "") -> float | None:
    """A record's validation score (`val_score`; `val_accuracy` in runs written before tasks)."""
    return record.get(f"{prefix}val_score", record.get(f"{prefix}val_accuracy"))


def measure_torch(ctx: Context, model: nn.Module) -> dict:
    """The task's score and metrics on the evaluation split, MACs and params of a PyTorch model."""
    split = eval_split(ctx)
    head = ctx.task.head_spec(model, ctx.data)
    fields = scored(ctx, raw_outputs(model, ctx.data, split), split, head)
    try:
        macs, params = count_macs_params(model, ctx.data.input_shape)
    except Exception:  # noqa: BLE001 - TorchScript modules cannot be traced by the counter
        macs, params = conv_linear_macs(model, ctx.data.input_shape), sum(p.numel() for p in model.parameters())
    return {**fields, "eval_samples": len(split), "macs": macs, "params": params}


def conv_linear_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Conv and matmul MACs at batch 1, counted by torch's FlopCounterMode (works on TorchScript)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_shape))
        return int(counter.get_total_flops() // 2)
    except Exception:  # noqa: BLE001 - a model the counter cannot run has no MAC count
        return None
