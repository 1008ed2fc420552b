"""Prune: remove channels for real (edgecnn.compression.pruning on Torch-Pruning's dependency graph), then fine-tune.

The target is a channel ratio, a MAC reduction (`2` for 2x fewer MACs), a parameter budget or a
latency budget (batch-1 p50 on `latency_device`, timed with the benchmark agent's loop while
searching); MAC, parameter and latency targets are met by bisecting the channel ratio on copies of
the model. Pruning runs in `iterative_steps` steps with fine-tuning between them, distilling from
the teacher when there is one (else from the unpruned model); when the steps end short of the
target (each step ranks channels again), the last step prunes once more to meet it. The classifier
is always kept whole.
When the pruned model lands more than 10% from its MAC, parameter or latency target (channel
rounding makes the steps coarse), the result's `target` and the run's notes say so and why.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from edgecnn.compression.pruning import ChannelPruner, group_multiple, kept_layers, latency_timer, pruning_mode
from edgecnn.compression.train import fit
from edgecnn.config.recipe import DistillConfig, PruneConfig, Recipe, recipe_dict, section_for_task
from edgecnn.core.errors import UserError
from edgecnn.core.progress import log
from edgecnn.data.datasets import batches
from edgecnn.models.files import count_macs_params, save_model
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import load_stage_model, measure_torch

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def make_pruner(
    model: nn.Module, cfg: PruneConfig, ratio: float, example: torch.Tensor, task_kept: list[str], steps: int,
    mode: str | None = None,
) -> ChannelPruner:
    """A pruner removing `ratio` of the channels of `model` over `steps` steps, as `cfg` says; the layers named
    in `task_kept` (Task.kept_layers) and prune.ignored_layers stay whole."""
    return ChannelPruner(
        model,
        example,
        ratio=ratio,
        steps=steps,
        kind=cfg.importance,
        global_pruning=cfg.global_pruning,
        round_to=cfg.round_to,
        ignored=kept_layers(model, cfg.ignored_layers, task_kept),
        mode=mode,
    )


def taylor_grads(model: nn.Module, ctx: Context, n_batches: int = 4) -> None:
    """Taylor importance needs gradients of the task's loss: accumulate a few batches' worth of training images
    (Dataset.calibration: drawn evenly across classes for classification)."""
    model.train()
    model.zero_grad()
    head = ctx.task.head_spec(model, ctx.data)
    for xb, yb in batches(ctx.data.calibration(n_batches * 128, ctx.recipe.seed), 128):
        ctx.task.loss(model(ctx.data.normalize(xb)), yb, head).backward()


def prune_copy(
    model: nn.Module, cfg: PruneConfig, ratio: float, example: torch.Tensor, task_kept: list[str],
    mode: str | None = None, grads: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A one-shot pruned copy of `model` (used to search the ratio that meets a target)."""
    m = copy.deepcopy(model)
    pruner = make_pruner(m, cfg, ratio, example, task_kept, 1, mode)
    if cfg.importance == "taylor" and grads is not None:
        grads(m)
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m.eval()


def target_of(cfg: PruneConfig) -> str | None:
    """Which target the recipe sets: macs_reduction, params_budget, latency_budget_ms, or None (ratio)."""
    for name in ("macs_reduction", "params_budget", "latency_budget_ms"):
        if getattr(cfg, name) is not None:
            return name
    return None


def find_ratio(
    model: nn.Module, cfg: PruneConfig, example: torch.Tensor, task_kept: list[str],
    mode: str | None = None, grads: Callable[[nn.Module], None] | None = None,
    timer: Callable[[nn.Module, torch.Tensor], float] | None = None,
) -> tuple[float, dict]:
    """The smallest channel ratio meeting the recipe's target (bisection on pruned copies), and the search log.

    An unreachable target raises UserError naming the smallest reachable value.
    """
    what = target_of(cfg)
    shape = tuple(example.shape[1:])
    base_macs, base_params = count_macs_params(model, shape)
    if what == "macs_reduction":
        goal, unit = base_macs / cfg.macs_reduction, "x fewer MACs"

        def value(m):
            return count_macs_params(m, shape)[0]

        def shown(v):
            return base_macs / max(v, 1)
    elif what == "params_budget":
        goal, unit = cfg.params_budget, " parameters"

        def value(m):
            return count_macs_params(m, shape)[1]

        def shown(v):
            return v
    else:
        timer = timer or latency_timer(cfg.latency_threads, cfg.latency_device)
        goal, unit = cfg.latency_budget_ms, f" ms p50 on {cfg.latency_device}"

        def value(m):
            return timer(m, example)

        def shown(v):
            return v

    log = {"target": what, "goal": goal, "tried": []}

    def measure(ratio: float) -> float:
        v = value(prune_copy(model, cfg, ratio, example, task_kept, mode, grads)) if ratio > 0 else value(model)
        log["tried"].append({"ratio": round(ratio, 4), "value": v})
        return v

    if measure(0.0) <= goal:
        return 0.0, log
    # a coarse scan first: with round_to, the value is not monotonic in the ratio near the ends
    lo, hi, best = 0.0, None, None
    for ratio in GRID:
        v = measure(ratio)
        best = v if best is None else min(best, v)
        if v <= goal:
            hi = ratio
            break
        lo = ratio
    if hi is None:
        raise UserError(
            f"prune.{what}: {getattr(cfg, what)} cannot be met with the kept layers; the smallest reachable "
            f"value is {shown(best):.2f}{unit}" if what != "params_budget" else
            f"prune.params_budget: {cfg.params_budget} cannot be met with the kept layers; the smallest reachable "
            f"value is {best:,} parameters"
        )
    for _ in range(5 if what == "latency_budget_ms" else 8):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if measure(mid) <= goal else (mid, hi)
    return hi, log


def correct_to_target(
    model: nn.Module, cfg: PruneConfig, example: torch.Tensor, task_kept: list[str], mode: str, macs_before: int,
    grads: Callable[[nn.Module], None], timer: Callable[[nn.Module, torch.Tensor], float] | None,
) -> float | None:
    """Prune `model` once more, in place, when its stepped pruning ended short of the recipe's target.

    Pruning in several steps ranks channels again at each step, so it can end elsewhere than the
    one-shot copy the ratio was searched on (global pruning ended 3% over a parameter budget). The
    smallest extra ratio that meets the target is searched on the model as it is and applied
    before the last fine-tuning; returns it, or None when the target already holds.
    """
    if cfg.macs_reduction is not None:  # the goal stays the original model's MACs over the asked reduction
        macs_now = count_macs_params(model, tuple(example.shape[1:]))[0]
        cfg = cfg.model_copy(update={"macs_reduction": cfg.macs_reduction * macs_now / macs_before})
    ratio, _ = find_ratio(model, cfg, example, task_kept, mode, grads, timer)
    if ratio <= 0:
        return None
    if cfg.importance == "taylor":
        grads(model)
    make_pruner(model, cfg, ratio, example, task_kept, 1, mode).step()
    model.zero_grad(set_to_none=True)
    return ratio


OVERSHOOT = 0.10  # a reached value further than this from the target (relative) is said in the result and notes

TARGET_TEXT = {
    "macs_reduction": lambda v: f"{v:.2f}x fewer MACs",
    "params_budget": lambda v: f"{int(v):,} parameters",
    "latency_budget_ms": lambda v: f"{v:.3f} ms p50",
}


def target_result(cfg: PruneConfig, search: dict | None, reached: float, model: nn.Module,
                  search_value: Callable[[float], float]) -> dict | None:
    """The target, the value the pruned model reached and, when that is more than OVERSHOOT off, a note on why.

    `search_value` turns a search-log value (MACs, params, ms) into the target's unit. Positive `off`
    is past the target (more MAC reduction, fewer parameters, lower latency than asked).
    """
    what = target_of(cfg)
    if what is None:
        return None
    goal = getattr(cfg, what)
    off = reached / goal - 1 if what == "macs_reduction" else 1 - reached / goal
    out = {"name": what, "goal": goal, "reached": reached, "off": off, "note": None}
    if abs(off) <= OVERSHOOT:
        return out
    show = TARGET_TEXT[what]
    step = group_multiple(model, cfg.round_to) or 1
    grain = (f"channel counts change in multiples of {step} (prune.round_to: {cfg.round_to}"
             f"{', raised for grouped convolutions' if step != (cfg.round_to or 1) else ''})" if step > 1
             else "channels are removed whole, and the smallest layers have few of them")
    chosen = (search or {}).get("ratio")
    below = sorted((t for t in (search or {}).get("tried", []) if chosen is not None and t["ratio"] < chosen),
                   key=lambda t: t["ratio"])
    near = ""
    if below and below[-1]["ratio"] == 0:
        near = (f"; even the smallest channel ratio, {chosen:.4f}, removes that much, and no pruning gives "
                f"{show(search_value(below[-1]['value']))}")
    elif below:
        near = (f"; the next smaller channel ratio tried, {below[-1]['ratio']:.4f}, gives "
                f"{show(search_value(below[-1]['value']))}, which misses the target")
    steps = (f"; pruning in {cfg.iterative_steps} steps also lands elsewhere than the one-shot search"
             if cfg.iterative_steps > 1 else "")
    out["note"] = (
        f"prune.{what}: asked for {show(goal)}, reached {show(reached)} ({100 * off:+.0f}% "
        f"{'past' if off > 0 else 'short of'} the target): {grain}{near}{steps}; "
        "a smaller prune.round_to (or none) gets closer"
    )
    return out


class PruneStage(Stage):
    name = "prune"
    reads = ("teacher", "distill")
    data_reads = ("augment", "eval_samples")

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.prune is not None

    def config(self, recipe: Recipe) -> dict:
        return {"prune": recipe_dict(recipe)["prune"], "distill": section_for_task(recipe.distill, recipe.task)}

    def run(self, ctx: Context, out: Path) -> dict:
        cfg = ctx.recipe.prune
        source = "distill" if "distill" in ctx.results else "teacher"
        model, info = load_stage_model(ctx, source)
        if info is None:
            raise UserError(
                "prune: a TorchScript model cannot be pruned; give teacher.model as file.py:Class "
                "(or torchvision:NAME) with teacher.weights, or add a student"
            )
        shape = ctx.data.input_shape
        task_kept = ctx.task.kept_layers(model, ctx.task.head_spec(model, ctx.data))
        example = torch.zeros(1, *shape)
        timer = latency_timer(cfg.latency_threads, cfg.latency_device) if cfg.latency_budget_ms else None
        before = count_macs_params(model, shape)
        mode = pruning_mode(
            model, example, cfg.ratio or 0.3,
            {"importance": cfg.importance, "global_pruning": cfg.global_pruning, "pruning_ratio": 0.3,
             "iterative_steps": 1, "round_to": cfg.round_to},
            kept_layers(model, cfg.ignored_layers, task_kept),
        )
        search = None
        ratio = cfg.ratio
        if target_of(cfg):
            ratio, search = find_ratio(model, cfg, example, task_kept, mode, lambda m: taylor_grads(m, ctx), timer)
            search["ratio"] = ratio
        timer = timer or latency_timer(1, "local-cpu")
        latency_before = timer(model, example)
        teacher = load_stage_model(ctx, "teacher")[0] if cfg.distill and source == "distill" else None
        if cfg.distill and source == "teacher":
            teacher = copy.deepcopy(model).eval()  # fine-tune by distilling from the unpruned self
        kd = (ctx.recipe.distill or DistillConfig()) if teacher is not None else None
        pruner = make_pruner(model, cfg, ratio, example, task_kept, cfg.iterative_steps, mode)
        history = []
        for step in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                taylor_grads(model, ctx)
            pruner.step()
            model.zero_grad(set_to_none=True)
            last = step == cfg.iterative_steps - 1
            correction = (
                correct_to_target(model, cfg, example, task_kept, mode, before[0], lambda m: taylor_grads(m, ctx),
                                  timer if cfg.latency_budget_ms else None)
                if last and cfg.iterative_steps > 1 and target_of(cfg) else None
            )
            epochs = (
                cfg.epochs - (cfg.epochs // cfg.iterative_steps) * (cfg.iterative_steps - 1)
                if last
                else cfg.epochs // cfg.iterative_steps
            )
            res = fit(
                model,
                ctx.data,
                cfg.model_copy(update={"epochs": epochs}),
                seed=ctx.recipe.seed + step,
                augment=ctx.augment,
                teacher=teacher,
                kd=kd,
                label=f"prune {step + 1}/{cfg.iterative_steps}",
                task=ctx.task,
            )
            macs, params = count_macs_params(model, shape)
            history.append({"step": step + 1, "macs": macs, "params": params, "epochs": epochs, "history": res.history,
                            **({"correction_ratio": correction} if correction else {}),
                            **({"teacher_runtime": res.teacher_runtime} if res.teacher_runtime else {})})
        model.eval()
        save_model(model, info, out / "model.pt")
        after = count_macs_params(model, shape)
        latency_after = timer(model, example)
        what = target_of(cfg)
        reached = {"macs_reduction": before[0] / max(1, after[0]), "params_budget": after[1],
                   "latency_budget_ms": latency_after}.get(what)
        target = target_result(cfg, search, reached, model,
                               (lambda v: before[0] / max(v, 1)) if what == "macs_reduction" else (lambda v: v))
        notes = [target["note"]] if target and target["note"] else []
        for n in notes:
            log(f"[yellow]note:[/yellow] {n}")
        return {
            "model_file": "model.pt",
            "source": source,
            "mode": mode,
            "ratio": ratio,
            "search": search,
            "target": target,
            "notes": notes,
            "macs_before": before[0],
            "params_before": before[1],
            "macs_after": after[0],
            "params_after": after[1],
            "macs_reduction": before[0] / max(1, after[0]),
            "latency": {
                "device": cfg.latency_device if cfg.latency_budget_ms else "local-cpu",
                "runtime": f"torch {torch.__version__.split('+')[0]} (eager, in process)",
                "threads": cfg.latency_threads if cfg.latency_budget_ms else 1,
                "batch_size": 1,
                "p50_ms_before": latency_before,
                "p50_ms_after": latency_after,
                "speedup": latency_before / latency_after if latency_after else None,
            },
            "steps": history,
            **measure_torch(ctx, model),
        }
