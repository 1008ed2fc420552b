"""Structured pruning on Torch-Pruning's dependency graph, for any CNN.

`ChannelPruner` removes channels for real. It first tries one dependency graph over the whole
model. Where Torch-Pruning cannot model the graph (a channel shuffle's view/transpose makes it
fail, or a pruned copy no longer runs), it falls back to pruning block by block: each sub-module
whose own graph works is pruned inside, with its input and output channels kept whole (a frozen
depthwise 1x1 layer on each side, never pruned, pins them), and sub-modules that still fail are
split further. So ShuffleNet's branches are pruned inside while its shuffled trunk stays whole.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from edgecnn.core.errors import UserError


def importance(kind: str):
    """Torch-Pruning's importance criterion named `kind` (magnitude, bn_scale or taylor)."""
    import torch_pruning as tp

    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.GroupTaylorImportance,
    }[kind]()


def kept_layers(model: nn.Module, names: list[str], task_kept: list[str]) -> list[nn.Module]:
    """The layers kept whole: those named (prune.ignored_layers) plus the task's (Task.kept_layers: classifier
    layers, a detector's prediction head).

    A name with `*`, `?` or `[` is a shell-style pattern over the layer names (`layer3.*.conv2`); each
    name or pattern must match at least one layer.
    """
    modules = dict(model.named_modules())
    del modules[""]
    chosen: list[str] = []
    for name in names:
        pattern = any(c in name for c in "*?[")
        found = fnmatch.filter(modules, name) if pattern else [name] if name in modules else []
        if not found:
            raise UserError(
                f"prune.ignored_layers: no layer {'matches' if pattern else 'named'} {name!r}; layers are e.g. "
                f"{', '.join(list(modules)[:5])}"
            )
        chosen += found
    return [modules[n] for n in dict.fromkeys([*chosen, *task_kept])]


class _Pinned(nn.Module):
    """A block between two frozen depthwise 1x1 layers, so a graph of the block keeps its interface whole."""

    def __init__(self, block: nn.Module, c_in: int, c_out: int):
        super().__init__()
        self.pre = nn.Conv2d(c_in, c_in, 1, groups=c_in, bias=False)
        self.block = block
        self.post = nn.Conv2d(c_out, c_out, 1, groups=c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.block(self.pre(x)))


def _n_weighted(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def group_multiple(model: nn.Module, round_to: int | None) -> int | None:
    """`round_to` raised to a multiple of every grouped (not depthwise) conv's groups.

    Torch-Pruning can leave a grouped conv with a channel count its groups do not divide; keeping
    every count a multiple of the groups avoids that.
    """
    multiple = round_to or 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels:
            multiple = math.lcm(multiple, m.groups)
    return None if multiple == 1 else multiple


class ChannelPruner:
    """Removes `ratio` of the channels of `model` in place over `steps` calls of `step()`.

    `mode` is "graph" (one dependency graph of the whole model) or "blocks" (the fallback).
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        ratio: float,
        steps: int = 1,
        kind: str = "magnitude",
        global_pruning: bool = False,
        round_to: int | None = None,
        ignored: list[nn.Module] = (),
        mode: str | None = None,
    ):
        self.model = model
        round_to = group_multiple(model, round_to)
        self.options = {
            "importance": kind,
            "global_pruning": global_pruning,
            "pruning_ratio": ratio,
            "iterative_steps": steps,
            "round_to": round_to,
        }
        self.ignored = list(ignored)
        self.mode = mode or pruning_mode(model, example, ratio, self.options, self.ignored)
        if self.mode == "graph":
            self.pruners = [self._pruner(model, example, self.ignored)]
        else:
            self.pruners = [self._pruner(_Pinned(b, c_in, c_out), x, self.ignored) for b, x, c_in, c_out in
                            _prunable_blocks(model, example, self.options, self.ignored)]

    def _pruner(self, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]):
        return _tp_pruner(model, example, self.options, ignored)

    def step(self) -> None:
        """One pruning step (of `steps`): every pruner removes its share of channels."""
        for p in self.pruners:
            p.step()


def _tp_pruner(model: nn.Module, example: torch.Tensor, options: dict, ignored: list[nn.Module]):
    import torch_pruning as tp

    opts = dict(options)
    if isinstance(model, _Pinned):
        ignored = [*ignored, model.pre, model.post]
    return tp.pruner.BasePruner(
        model, example, importance=importance(opts.pop("importance")), ignored_layers=ignored, **opts
    )


def _runs_after_pruning(model: nn.Module, example: torch.Tensor, options: dict, ignored: list[nn.Module]) -> bool:
    """Whether a pruned copy of `model` builds, prunes and still maps `example` to the same output shape."""
    try:
        with torch.no_grad():
            want = model.eval()(example).shape
        twin = copy.deepcopy(model)
        ids = {id(m) for m in ignored}
        twin_ignored = [t for m, t in zip(model.modules(), twin.modules(), strict=True) if id(m) in ids]
        p = _tp_pruner(twin, example, {**options, "iterative_steps": 1}, twin_ignored)
        p.step()
        with torch.no_grad():
            return twin.eval()(example).shape == want
    except Exception:  # noqa: BLE001 - any failure means this graph cannot be pruned as one
        return False


_LAYOUT_OPS = {"transpose", "permute", "swapaxes", "swapdims", "movedim", "pixel_shuffle", "pixel_unshuffle",
               "channel_shuffle", "native_channel_shuffle"}


def moves_channels(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether a forward pass reorders channels (a channel shuffle: view to 5-D, transpose, ...).

    Torch-Pruning models such graphs as if channels stayed in place, so they are pruned block-wise.
    """
    from torch.overrides import TorchFunctionMode

    found = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            t = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if t is not None and t.dim() >= 4 and name in _LAYOUT_OPS:
                found.append(name)
            out = func(*args, **(kwargs or {}))
            if t is not None and name in ("view", "reshape") and t.dim() >= 4 and isinstance(out, torch.Tensor):
                if out.dim() > 2 and out.shape[:2] != t.shape[:2]:
                    found.append(name)
            return out

    with torch.no_grad(), Watch():
        model.eval()(example)
    return bool(found)


def pruning_mode(model: nn.Module, example: torch.Tensor, ratio: float, options: dict, ignored) -> str:
    """"graph" when one dependency graph of the whole model prunes correctly, else "blocks"."""
    if moves_channels(model, example):
        return "blocks"
    opts = {**options, "pruning_ratio": max(ratio, 0.3)}
    return "graph" if _runs_after_pruning(model, example, opts, list(ignored)) else "blocks"


def _child_inputs(module: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The input and output of each direct child called once with one 4-D tensor in a forward of `module`."""
    seen: dict[str, list] = {}
    hooks = []
    for name, child in module.named_children():

        def hook(_m, args, out, name=name):
            seen.setdefault(name, []).append((args, out))

        hooks.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return {
        n: (calls[0][0][0], calls[0][1])
        for n, calls in seen.items()
        if len(calls) == 1
        and len(calls[0][0]) == 1
        and isinstance(calls[0][0][0], torch.Tensor)
        and isinstance(calls[0][1], torch.Tensor)
        and calls[0][0][0].dim() == 4
        and calls[0][1].dim() == 4
    }


def _prunable_blocks(model: nn.Module, example: torch.Tensor, options: dict, ignored: list[nn.Module]) -> list:
    """(block, example input, in channels, out channels) for the largest sub-modules prunable inside."""
    found = []

    def visit(module: nn.Module, x: torch.Tensor) -> None:
        for name, (xi, yo) in _child_inputs(module, x).items():
            child = getattr(module, name)
            if _n_weighted(child) < 2:
                continue
            pinned = _Pinned(child, xi.shape[1], yo.shape[1])
            if not moves_channels(child, xi) and _runs_after_pruning(pinned, xi, options, ignored):
                found.append((child, xi, xi.shape[1], yo.shape[1]))
            else:
                visit(child, xi)

    visit(model, example)
    return found


def latency_timer(threads: int = 1, device: str = "local-cpu") -> Callable[[nn.Module, torch.Tensor], float]:
    """A function timing one batch-1 forward (p50 ms) with the benchmark agent's loop, in this process.

    Each timing leases its CPUs as the agent's do (edgecnn.runtime.host.cpu_lease); a one-thread
    timing runs on its leased CPU.
    """
    from edgecnn.devices.profiles import check_local_device
    from edgecnn.runtime.agent import measure_latency
    from edgecnn.runtime.host import allowed_cpus, cpu_lease, pinned_thread

    check_local_device(device, "prune.latency_device")
    dev = "cuda" if device == "local-gpu" else "cpu"

    class _Run:
        def __init__(self, model: nn.Module):
            self.model = model.eval().to(dev)

        def run(self, x):
            with torch.inference_mode():
                out = self.model(x)
                if dev == "cuda":
                    torch.cuda.synchronize()
                return out

    def time_model(model: nn.Module, example: torch.Tensor) -> float:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads or saved)
        try:
            m = copy.deepcopy(model)
            with cpu_lease(threads or len(allowed_cpus()) or 1) as cpus, pinned_thread(cpus if threads == 1 else []):
                lat = measure_latency(_Run(m), example.to(dev), warmup=5, min_iters=30, min_seconds=0.3)
            return lat["p50"]
        finally:
            torch.set_num_threads(saved)

    return time_model
