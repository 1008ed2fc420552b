"""Prune: remove channels for real with Torch-Pruning's dependency graph, then fine-tune.

The target is a channel ratio, a MAC reduction (`2` for 2x fewer MACs) or a parameter budget;
MAC and parameter targets are met by bisecting the channel ratio on copies of the model. Pruning
runs in `iterative_steps` steps with fine-tuning between them, distilling from the teacher when
there is one. The classifier (the last Linear layer) is always kept whole.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.data import batches
from edgecnn.errors import UserError
from edgecnn.models import count_macs_params, save_model
from edgecnn.pipeline import Context, Stage
from edgecnn.recipe import DistillConfig, PruneConfig, Recipe, recipe_dict
from edgecnn.stages.common import load_stage_model, measure_torch
from edgecnn.train import fit


def _importance(kind: str):
    import torch_pruning as tp

    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.GroupTaylorImportance,
    }[kind]()


def _ignored(model: nn.Module, names: list[str], num_classes: int) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise UserError(
            f"prune.ignored_layers: no layer named {missing[0]!r}; layers are e.g. {', '.join(list(modules)[1:6])}"
        )
    kept = [modules[n] for n in names]
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    heads += [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
    return kept + heads


def make_pruner(model: nn.Module, cfg: PruneConfig, ratio: float, example: torch.Tensor, num_classes: int, steps: int):
    """A Torch-Pruning pruner removing `ratio` of the channels over `steps` steps."""
    import torch_pruning as tp

    return tp.pruner.BasePruner(
        model,
        example,
        importance=_importance(cfg.importance),
        global_pruning=cfg.global_pruning,
        pruning_ratio=ratio,
        iterative_steps=steps,
        round_to=cfg.round_to,
        ignored_layers=_ignored(model, cfg.ignored_layers, num_classes),
    )


def _taylor_grads(model: nn.Module, ctx: Context, n_batches: int = 4) -> None:
    """Taylor importance needs gradients of the loss: accumulate a few batches' worth."""
    model.train()
    model.zero_grad()
    for i, (xb, yb) in enumerate(batches(ctx.data.train, 128)):
        if i == n_batches:
            break
        F.cross_entropy(model(ctx.data.normalize(xb)), yb).backward()


def prune_copy(model: nn.Module, cfg: PruneConfig, ratio: float, ctx: Context) -> nn.Module:
    """A one-shot pruned copy of `model` (used to search the ratio that meets a target)."""
    m = copy.deepcopy(model)
    example = torch.zeros(1, *ctx.data.input_shape)
    pruner = make_pruner(m, cfg, ratio, example, ctx.data.num_classes, 1)
    if cfg.importance == "taylor":
        _taylor_grads(m, ctx)
    pruner.step()
    return m.eval()


def find_ratio(model: nn.Module, cfg: PruneConfig, ctx: Context, base: tuple[int, int]) -> float:
    """The channel ratio that meets a MAC-reduction or parameter target (bisection on copies)."""
    shape = ctx.data.input_shape
    if cfg.macs_reduction is not None:
        goal, index, what = base[0] / cfg.macs_reduction, 0, "macs_reduction"
    else:
        goal, index, what = cfg.params_budget, 1, "params_budget"
    smallest = count_macs_params(prune_copy(model, cfg, 0.95, ctx), shape)
    if smallest[index] > goal:
        reach = base[0] / smallest[0] if index == 0 else smallest[1]
        raise UserError(
            f"prune.{what}: cannot be met with the kept layers; the smallest reachable value is "
            f"{reach:.2f}" + ("x fewer MACs" if index == 0 else " parameters")
        )
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        value = count_macs_params(prune_copy(model, cfg, mid, ctx), shape)[index]
        lo, hi = (lo, mid) if value <= goal else (mid, hi)
    return hi


class PruneStage(Stage):
    name = "prune"
    reads = ("teacher", "distill")

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.prune is not None

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        return {"prune": r["prune"], "distill": r["distill"]}

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
        before = count_macs_params(model, shape)
        ratio = (
            cfg.ratio
            if cfg.macs_reduction is None and cfg.params_budget is None
            else find_ratio(model, cfg, ctx, before)
        )
        teacher = load_stage_model(ctx, "teacher")[0] if cfg.distill and source == "distill" else None
        if cfg.distill and source == "teacher":
            teacher = copy.deepcopy(model).eval()  # fine-tune by distilling from the unpruned self
        kd = (ctx.recipe.distill or DistillConfig()) if teacher is not None else None
        pruner = make_pruner(model, cfg, ratio, torch.zeros(1, *shape), ctx.data.num_classes, cfg.iterative_steps)
        history = []
        for step in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                _taylor_grads(model, ctx)
            pruner.step()
            model.zero_grad(set_to_none=True)
            last = step == cfg.iterative_steps - 1
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
            )
            macs, params = count_macs_params(model, shape)
            history.append({"step": step + 1, "macs": macs, "params": params, "epochs": epochs, "history": res.history})
        save_model(model, info, out / "model.pt")
        after = count_macs_params(model, shape)
        return {
            "model_file": "model.pt",
            "source": source,
            "ratio": ratio,
            "macs_before": before[0],
            "params_before": before[1],
            "macs_after": after[0],
            "params_after": after[1],
            "macs_reduction": before[0] / max(1, after[0]),
            "steps": history,
            **measure_torch(ctx, model),
        }
