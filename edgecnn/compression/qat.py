"""Quantization-aware training (PT2E): the fallback when post-training int8 misses the budget.

The model is captured with torch.export, prepared with litert-torch's quantizer in QAT mode
(fake-quantized weights and activations, conv+BN folded as at inference) and fine-tuned for a
few epochs, distilling from the teacher when there is one (the task's distillation loss). The result
serves both runtimes: the PT2E graph converts straight to a full-integer .tflite, and its
fine-tuned float weights, copied back into the eager model, are what ONNX Runtime's static
quantization starts from.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from edgecnn.compression.export import for_export
from edgecnn.compression.quantize import tflite_quantizer
from edgecnn.config.recipe import DistillConfig, QatConfig
from edgecnn.core.console import quiet_libraries
from edgecnn.core.progress import progress_bar
from edgecnn.data.datasets import Dataset
from edgecnn.tasks.base import Task
from edgecnn.tasks.registry import get_task


class _PatternModule(nn.Module):
    """A plain function as a module: torch >= 2.10's torch.export.export takes modules only."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def _torchao_patterns_as_modules() -> Iterator[None]:
    """Let the PT2E QAT pattern matchers (which export plain functions) run on this torch.

    torchao and litert-torch's quantizer both hold a reference to the helper, so both are patched.
    """
    import litert_torch.quantize.pt2e_quantizer_utils as litert_utils
    from torchao.quantization.pt2e import qat_utils, utils

    original = utils._get_aten_graph_module_for_pattern
    holders = [m for m in (utils, qat_utils, litert_utils) if hasattr(m, "_get_aten_graph_module_for_pattern")]

    def wrapped(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, nn.Module):
            pattern = _PatternModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    for m in holders:
        m._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        for m in holders:
            m._get_aten_graph_module_for_pattern = original


@dataclass
class QatResult:
    prepared: nn.Module  # the fake-quantized PT2E graph, in eval mode
    quantizer: object  # the litert-torch quantizer it was prepared with
    finetuned: nn.Module  # the eager model carrying the fine-tuned float weights
    history: list[dict]


def train_qat(
    model: nn.Module,
    data: Dataset,
    cfg: QatConfig,
    *,
    seed: int,
    augment: bool,
    per_channel: bool = True,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    task: Task | None = None,
    head: dict | None = None,
) -> QatResult:
    """Fine-tune `model` (not modified) under fake int8 quantization for cfg.epochs epochs, on `task`'s losses."""
    with quiet_libraries():  # importing torchao logs a torch deprecation warning
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    task = task or get_task()
    head = head if head is not None else task.head_spec(model, data)
    kd = DistillConfig(temperature=temperature, alpha=alpha)
    torch.manual_seed(seed)
    bs = min(cfg.batch_size, len(data.train))
    example = (data.normalize(data.calibration(bs, seed).x),)
    batch = torch.export.Dim("batch", min=2, max=65_536)
    with quiet_libraries(), _torchao_patterns_as_modules():
        exported = torch.export.export(copy.deepcopy(for_export(model)), example, dynamic_shapes=({0: batch},)).module()
        quantizer = tflite_quantizer(per_channel, qat=True)
        prepared = prepare_qat_pt2e(exported, quantizer)
    if teacher is not None:
        teacher.eval()
    steps = cfg.epochs * max(1, len(data.train) // bs)
    opt = torch.optim.SGD(prepared.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    history = []
    with progress_bar("qat", total=cfg.epochs, unit="epoch") as bar:
        for epoch in range(cfg.epochs):
            with _torchao_patterns_as_modules():
                move_exported_model_to_train(prepared)
            total, n = 0.0, 0
            for xb, yb in task.batches(data, data.train, bs, shuffle=True, augment=augment, generator=g,
                                       drop_last=True):
                x = data.normalize(xb)
                out = prepared(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = task.distill_loss(out, t_out, yb, head, kd)
                else:
                    loss = task.loss(out, yb, head)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, n = total + float(loss.detach()), n + 1
            history.append({"epoch": epoch + 1, "loss": total / max(1, n)})
            bar.advance(f"loss {total / max(1, n):.3f}")
    with _torchao_patterns_as_modules():
        move_exported_model_to_eval(prepared)
    return QatResult(prepared, quantizer, _finetuned_eager(model, prepared), history)


def _finetuned_eager(model: nn.Module, prepared: nn.Module) -> nn.Module:
    """A copy of the eager model with the QAT graph's parameters and BN statistics (same names)."""
    eager = copy.deepcopy(model).eval()
    trained = prepared.state_dict()
    own = eager.state_dict()
    missing = [k for k in own if k not in trained and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"QAT graph lacks {missing[:3]}: cannot copy its weights back")
    eager.load_state_dict({k: (trained[k] if k in trained else v).detach().clone() for k, v in own.items()})
    return eager
