"""Helpers the stages share: loading earlier stages' models, the decision and test splits, PyTorch accuracy.

Choices are made on the validation split (`decision_split`); reported figures use the test split
(`eval_split`).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from edgecnn.compression.train import accuracy, predict
from edgecnn.core.artifacts import file_sha256
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Split
from edgecnn.models.files import ModelInfo, count_macs_params, load_model_file, load_torchscript
from edgecnn.pipeline.context import Context


def file_fingerprint(path: str | None) -> str | None:
    """Hash of a user file named in the recipe (part of a stage key), None when not a file."""
    if path and ".py:" in path:
        path = path.split(".py:")[0] + ".py"
    if path and Path(path).is_file():
        return file_sha256(path)
    return None


def load_stage_model(ctx: Context, stage: str) -> tuple[nn.Module, ModelInfo | None]:
    """The PyTorch model a finished stage produced (a TorchScript teacher has no ModelInfo)."""
    r = ctx.results[stage]
    if r.get("torchscript"):
        return load_torchscript(Path(r["torchscript"])).eval(), None
    return load_model_file(ctx.stage_dir(stage) / r["model_file"])


DECISION_SPLIT = "val"
"""The split every choice is scored on (int8 candidate, accuracy and parity gates, QAT, deploy)."""


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


def measure_torch(ctx: Context, model: nn.Module) -> dict:
    """Accuracy on the evaluation split, MACs and params of a PyTorch model."""
    split = eval_split(ctx)
    acc = accuracy(predict(model, ctx.data, split), split.y)
    try:
        macs, params = count_macs_params(model, ctx.data.input_shape)
    except Exception:  # noqa: BLE001 - TorchScript modules cannot be traced by the counter
        macs, params = conv_linear_macs(model, ctx.data.input_shape), sum(p.numel() for p in model.parameters())
    return {"accuracy": acc, "eval_samples": len(split), "macs": macs, "params": params}


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
