"""The training loop shared by every stage that trains: plain, distilled, or fine-tuning.

Fast on the hardware at hand: bf16 autocast on CPUs that support it (AMX/AVX-512 BF16), CUDA
mixed precision on GPUs, channels-last memory format, a one-cycle schedule, and augmentation on
whole uint8 batches. Losses and batches are the task's (edgecnn.tasks: cross-entropy and Hinton's
soft targets for classification; the detection losses for detectors), optionally plus a feature
loss on maps of equal resolution: attention transfer (Zagoruyko & Komodakis) or FitNets hints
(1x1-conv regressors trained jointly). The frozen teacher runs where `distill.teacher_runtime`
says (edgecnn.compression.teacher_runtime: OpenVINO on CPUs where it stands in exactly).
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

from edgecnn.compression.teacher_runtime import teacher_for_training
from edgecnn.config.recipe import DistillConfig, TrainConfig
from edgecnn.core.environment import cpu_flags, is_x86
from edgecnn.core.errors import UserError
from edgecnn.core.progress import progress_bar
from edgecnn.data.datasets import Dataset, Split, batches
from edgecnn.tasks.base import Task
from edgecnn.tasks.registry import get_task


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX on x86).

    oneDNN also says yes on x86 CPUs with plain AVX-512 (an Intel Xeon without BF16 or AMX), where it
    emulates bf16: slower than fp32 there, so on x86 the CPU's own flags decide.
    """
    if is_x86():
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
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
    """Collects, per spatial resolution, the last 4-D output a sub-module produced in a forward pass.

    In a CIFAR ResNet these are the outputs of the three stages (32, 16 and 8 pixels): the
    feature maps attention transfer and FitNets hints compare between student and teacher.
    """

    def __init__(self, model: nn.Module):
        if isinstance(model, torch.jit.ScriptModule):
            raise UserError(
                "distill.feature_loss needs the teacher as Python code (file.py:Class or torchvision:NAME "
                "with weights); a TorchScript teacher has no feature hooks; set distill.feature_loss: none"
            )
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook) for name, m in model.named_modules() if name]

    def _hook(self, _m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            self.outputs[out.shape[-1]] = out  # later modules at a resolution overwrite earlier ones

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017) spatial attention: normalised mean of squared activations."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1))


def attention_loss(s_feats: dict[int, torch.Tensor], t_feats: dict[int, torch.Tensor]) -> torch.Tensor:
    """Attention transfer: squared distance of attention maps, summed over the shared resolutions."""
    common = sorted(set(s_feats) & set(t_feats))
    return sum((attention_map(s_feats[r]) - attention_map(t_feats[r])).pow(2).mean() for r in common)


class HintRegressors(nn.Module):
    """FitNets (Romero et al. 2015): a 1x1 conv per shared resolution mapping student to teacher channels."""

    def __init__(self, s_feats: dict[int, torch.Tensor], t_feats: dict[int, torch.Tensor]):
        super().__init__()
        self.keys = sorted(set(s_feats) & set(t_feats))
        self.convs = nn.ModuleDict(
            {str(r): nn.Conv2d(s_feats[r].shape[1], t_feats[r].shape[1], 1, bias=False) for r in self.keys}
        )

    def forward(self, s_feats: dict[int, torch.Tensor], t_feats: dict[int, torch.Tensor]) -> torch.Tensor:
        """Mean squared error between regressed student features and teacher features."""
        return sum(F.mse_loss(self.convs[str(r)](s_feats[r]).float(), t_feats[r].float()) for r in self.keys)


FEATURE_WEIGHTS = {"attention": 1000.0, "hints": 1.0}  # the usual weights (AT paper's beta; FitNets' MSE)


@dataclass
class FitResult:
    epochs: int
    precision: str
    images_per_s: float
    history: list[dict]
    teacher_runtime: dict | None = None  # distillation: {"runtime": torch | openvino, "reason": ...}


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def finish_distributed() -> None:
    """Wait for every rank, then leave the process group (a no-op without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_distributed() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPUs, gloo on CPUs); True if joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


def _to_layout(model: nn.Module, layout: torch.memory_format) -> None:
    try:
        model.to(memory_format=layout)
    except (RuntimeError, TypeError):
        pass  # some TorchScript modules cannot change their weights' layout; they still run


class _Distiller:
    """The distillation loss of one batch: the task's loss toward the teacher plus an optional feature loss."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, kd: DistillConfig, probe: torch.Tensor, task: Task, head: dict,
        precision: str,
    ):
        self.kd, self.task, self.head = kd, task, head
        self.kind = kd.feature_loss
        self.weight = kd.feature_weight if kd.feature_weight is not None else FEATURE_WEIGHTS.get(self.kind, 0.0)
        self.s_tap = self.t_tap = self.hints = None
        feature = self.kind != "none" and self.weight > 0
        self.run = teacher_for_training(teacher, kd.teacher_runtime, probe=probe, device=probe.device,
                                        precision=precision, feature_loss=feature)
        if feature:
            self.s_tap, self.t_tap = FeatureTap(student), FeatureTap(teacher)
            with torch.no_grad():
                was = student.training
                student.eval()
                student(probe)
                teacher(probe)
                student.train(was)
            if not set(self.s_tap.outputs) & set(self.t_tap.outputs):
                self.close()
                raise UserError(
                    f"distill.feature_loss {self.kind}: student and teacher share no feature-map resolution "
                    f"(student {sorted(self.s_tap.outputs)}, teacher {sorted(self.t_tap.outputs)}); use none"
                )
            if self.kind == "hints":
                self.hints = HintRegressors(self.s_tap.outputs, self.t_tap.outputs).to(probe.device)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.hints.parameters()) if self.hints is not None else []

    def loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.run.forward(x)
        loss = self.task.distill_loss(out, t_out, y, self.head, self.kd)
        if self.s_tap is not None:
            s_f, t_f = self.s_tap.outputs, self.t_tap.outputs
            feat = self.hints(s_f, t_f) if self.hints is not None else attention_loss(s_f, t_f)
            loss = loss + self.weight * feat
        return loss

    def close(self) -> None:
        for tap in (self.s_tap, self.t_tap):
            if tap is not None:
                tap.close()


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
    task: Task | None = None,
    head: dict | None = None,
) -> FitResult:
    """Train `model` in place on data.train; distil from `teacher` with the loss settings of `kd`.

    `task` (classification by default) gives the batches, the loss and the distillation loss;
    `head` is its head spec of `model` (Task.head_spec, computed when not given).

    Under torchrun each process trains on its own shard of every epoch and DDP averages the
    gradients, so every rank ends with the same weights.
    """
    import time

    task = task or get_task()
    head = head if head is not None else task.head_spec(model, data)
    device = pick_device()
    rank, world = rank_and_world()
    model.to(device)
    if cfg.channels_last:
        _to_layout(model, torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
        if cfg.channels_last:
            _to_layout(teacher, torch.channels_last)
    history: list[dict] = []
    ctx, precision = autocast_for(cfg.precision, device)
    if cfg.epochs == 0 or len(data.train) == 0:
        return FitResult(0, precision, 0.0, history)
    torch.manual_seed(seed)
    distiller = None
    if kd is not None and teacher is not None:
        distiller = _Distiller(model, teacher, kd, data.normalize(data.train.x[:2]).to(device), task, head, precision)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in model.parameters() if p.requires_grad] + (distiller.parameters() if distiller else [])
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    per_rank = len(data.train) // world
    steps = max(1, per_rank // cfg.batch_size) if per_rank >= cfg.batch_size else 1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    images, seconds = 0, 0.0
    try:
        with progress_bar(f"{label}", total=cfg.epochs, unit="epoch") as bar:
            for epoch in range(cfg.epochs):
                train_model.train()
                t0, loss_sum, n_batches, n_images = time.perf_counter(), 0.0, 0, 0
                g.manual_seed(seed * 1000 + epoch)
                order = torch.randperm(len(data.train), generator=g)[rank * per_rank : (rank + 1) * per_rank]
                shard = Split(data.train.x[order], data.train.y[order])
                for xb, yb in task.batches(
                    data, shard, cfg.batch_size, shuffle=True, augment=augment, generator=g, drop_last=True
                ):
                    x = data.normalize(xb).to(device, non_blocking=True)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = yb.to(device)
                    with ctx:
                        out = train_model(x)
                        loss = distiller.loss(out, x, y) if distiller else task.loss(out, y, head)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if world > 1 and distiller is not None:
                        _average_grads(distiller.parameters(), world)
                    scaler.step(opt)
                    scaler.update()
                    if n_batches < steps:
                        sched.step()
                    loss_sum += float(loss.detach())
                    n_batches += 1
                    n_images += len(yb)
                dt = time.perf_counter() - t0
                seconds += dt
                images += n_images
                loss_avg = loss_sum / max(1, n_batches)
                history.append({"epoch": epoch + 1, "loss": loss_avg, "epoch_s": round(dt, 3), "images": n_images})
                if on_epoch is not None:
                    on_epoch(epoch, model)
                bar.advance(f"loss {loss_avg:.3f}")
    finally:
        if distiller is not None:
            distiller.close()
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:  # the caller's teacher goes back as it came: on the CPU, NCHW
        _to_layout(teacher.to("cpu"), torch.contiguous_format)
    teacher_run = {"runtime": distiller.run.runtime, "reason": distiller.run.reason} if distiller else None
    return FitResult(cfg.epochs, precision, images * world / seconds if seconds else 0.0, history, teacher_run)


def _average_grads(params: list[nn.Parameter], world: int) -> None:
    """All-reduce the gradients of parameters DDP does not own (the FitNets regressors)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, split: Split, batch_size: int = 500) -> torch.Tensor:
    """Logits of `model` (fp32, eval mode) on a split, in order."""
    model.eval()
    outs = [model(data.normalize(xb)).float() for xb, _ in batches(split, batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0, data.num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in 0..1."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
