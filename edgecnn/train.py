"""The training loop shared by every stage that trains: plain, distilled, or fine-tuning.

Fast on the hardware at hand: bf16 autocast on CPUs that support it (AMX/AVX-512 BF16), CUDA
mixed precision on GPUs, channels-last memory format, a one-cycle schedule, and augmentation on
whole uint8 batches. Distillation is Hinton's soft-target loss (temperature, alpha) mixed with
the hard-label loss, optionally plus attention transfer on feature maps of equal resolution.
Under torchrun (WORLD_SIZE > 1) the loop wraps the model in DistributedDataParallel and gives
each process its own shard of every epoch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.data import Dataset, Split, batches
from edgecnn.progress import progress_bar
from edgecnn.recipe import DistillConfig, TrainConfig


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(precision: str, device: torch.device) -> tuple[contextlib.AbstractContextManager, str]:
    """The autocast context for a precision choice, and the precision actually used."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class FeatureTap:
    """Collects the output of the last conv layer at each spatial resolution (for attention transfer)."""

    def __init__(self, model: nn.Module):
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, nn.Conv2d)]

    def _hook(self, _m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        self.outputs[out.shape[-1]] = out  # later convs at a resolution overwrite earlier ones

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017) spatial attention: normalised mean of squared activations."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1))


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(soft teacher || soft student) + (1-alpha) * CE."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, 1), F.softmax(teacher_logits.float() / t, 1), reduction="batchmean"
    ) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


@dataclass
class FitResult:
    epochs: int
    precision: str
    images_per_s: float
    history: list[dict]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    seed: int,
    augment: bool,
    teacher: nn.Module | None = None,
    kd: DistillConfig | None = None,
    label: str = "train",
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> FitResult:
    """Train `model` in place on data.train; distil from `teacher` with the loss settings of `kd`."""
    import time

    device = pick_device()
    rank, world = _world()
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
    history: list[dict] = []
    ctx, precision = autocast_for(cfg.precision, device)
    if cfg.epochs == 0 or len(data.train) == 0:
        return FitResult(0, precision, 0.0, history)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_rank = len(data.train) // world
    steps = max(1, per_rank // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    distill = kd is not None and teacher is not None
    use_at = distill and kd.feature_loss == "attention" and kd.feature_weight > 0
    s_tap = FeatureTap(model) if use_at else None
    t_tap = FeatureTap(teacher) if use_at else None
    images, seconds = 0, 0.0
    try:
        with progress_bar(f"{label}", total=cfg.epochs, unit="epoch") as bar:
            for epoch in range(cfg.epochs):
                train_model.train()
                t0, loss_sum, n_batches = time.perf_counter(), 0.0, 0
                g.manual_seed(seed * 1000 + epoch)
                order = torch.randperm(len(data.train), generator=g)[rank * per_rank : (rank + 1) * per_rank]
                shard = Split(data.train.x[order], data.train.y[order])
                for xb, yb in batches(
                    shard, cfg.batch_size, shuffle=True, augment=augment, generator=g, drop_last=True
                ):
                    x = data.normalize(xb).to(device, non_blocking=True)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = yb.to(device)
                    with ctx:
                        out = train_model(x)
                        if distill:
                            with torch.no_grad():
                                t_out = teacher(x)
                            loss = kd_loss(out, t_out, y, kd.temperature, kd.alpha)
                            if use_at:
                                common = sorted(set(s_tap.outputs) & set(t_tap.outputs))
                                at = sum(
                                    (attention_map(s_tap.outputs[r]) - attention_map(t_tap.outputs[r])).pow(2).mean()
                                    for r in common
                                )
                                loss = loss + kd.feature_weight * at
                        else:
                            loss = F.cross_entropy(out.float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += float(loss.detach())
                    n_batches += 1
                    images += len(yb)
                dt = time.perf_counter() - t0
                seconds += dt
                history.append({"epoch": epoch + 1, "loss": loss_sum / max(1, n_batches), "epoch_s": round(dt, 3)})
                if on_epoch is not None:
                    on_epoch(epoch, model)
                bar.advance(f"loss {loss_sum / max(1, n_batches):.3f}")
    finally:
        for tap in (s_tap, t_tap):
            if tap is not None:
                tap.close()
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to("cpu")
    return FitResult(cfg.epochs, precision, images * world / seconds if seconds else 0.0, history)


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, split: Split, batch_size: int = 500) -> torch.Tensor:
    """Logits of `model` (fp32, eval mode) on a split, in order."""
    model.eval()
    outs = [model(data.normalize(xb)).float() for xb, _ in batches(split, batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0, data.num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in 0..1."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
