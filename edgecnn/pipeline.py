"""The pipeline: chains stages over a run directory, with atomic stage folders and `--resume`.

Each stage runs into a hidden temporary folder; only when it has finished are its outputs hashed
into a manifest and the folder renamed into place, so a stage folder is either complete or
absent, whatever kills the process. A stage's key hashes its config, the manifests of the stages
it reads and the library versions; `--resume` reuses a finished stage whose key is unchanged and
whose outputs still match their hashes, and redoes it and everything after it otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.artifacts import json_sha256, outputs_intact, read_manifest, write_manifest
from edgecnn.data import Dataset, load_data
from edgecnn.environment import environment
from edgecnn.errors import UserError
from edgecnn.progress import log
from edgecnn.recipe import Recipe, recipe_dict


@dataclass
class Context:
    """What every stage shares: the recipe, the run directory, data and earlier stages' results."""

    recipe: Recipe
    run_dir: Path
    results: dict[str, dict] = field(default_factory=dict)
    _data: Dataset | None = None

    @property
    def data(self) -> Dataset:
        if self._data is None:
            d = self.recipe.data
            self._data = load_data(d.spec, d.val_fraction, d.mean, d.std)
        return self._data

    @property
    def augment(self) -> bool:
        a = self.recipe.data.augment
        if a == "auto":
            c, h, w = self.data.input_shape
            return c == 3 and h == w == 32
        return a == "cifar"

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def latest_model(self) -> tuple[str, Path]:
        """The stage and file of the most compressed PyTorch model so far."""
        for stage in ("prune", "distill", "teacher"):
            r = self.results.get(stage)
            if r and r.get("model_file"):
                return stage, self.stage_dir(stage) / r["model_file"]
        raise UserError("no model to compress: the recipe needs a teacher or a student")


class Stage:
    """A pipeline stage: a config slice, the stages it reads, and `run` producing files + result."""

    name: str = ""
    reads: tuple[str, ...] = ()

    def enabled(self, recipe: Recipe) -> bool:
        return True

    def config(self, recipe: Recipe) -> Any:
        """The part of the recipe this stage's output depends on (hashed into its key)."""
        return recipe_dict(recipe).get(self.name)

    def run(self, ctx: Context, out: Path) -> dict:
        """Write this stage's artifacts into `out` and return its result record."""
        raise NotImplementedError


def _versions() -> dict:
    env = environment()
    return {k: env[k] for k in ("torch", "torch_pruning", "onnx", "onnxruntime", "litert_torch", "ai_edge_litert")}


def stage_key(stage: Stage, ctx: Context) -> dict:
    """Everything a stage's output depends on."""
    recipe = ctx.recipe
    inputs = {s: ctx.results[s].get("_hash") for s in stage.reads if s in ctx.results}
    return {
        "stage": stage.name,
        "config": stage.config(recipe),
        "seed": recipe.seed,
        "data": recipe_dict(recipe)["data"],
        "inputs": inputs,
        "versions": _versions(),
    }


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by the finished `tmp` folder (old folder renamed aside first, then removed)."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def run_stages(stages: list[Stage], ctx: Context, resume: bool) -> dict[str, str]:
    """Run or reuse each enabled stage in order; returns {stage: 'ran'|'reused'|'skipped'}."""
    status: dict[str, str] = {}
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ctx.run_dir.glob(".*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # folders of stages killed mid-way
    redo = False
    for stage in stages:
        if not stage.enabled(ctx.recipe):
            status[stage.name] = "skipped"
            continue
        key = stage_key(stage, ctx)
        key_hash = json_sha256(key)
        final = ctx.stage_dir(stage.name)
        manifest = read_manifest(final) if resume and not redo else None
        if manifest and manifest.get("key_hash") == key_hash and outputs_intact(final, manifest):
            ctx.results[stage.name] = {**manifest["result"], "_hash": key_hash}
            status[stage.name] = "reused"
            log(f"[dim]{stage.name}: reused (finished earlier, inputs unchanged)[/dim]")
            continue
        redo = True
        tmp = ctx.run_dir / f".{stage.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log(f"[bold cyan]{stage.name}[/bold cyan]: running")
        t0 = time.perf_counter()
        try:
            result = stage.run(ctx, tmp)
            result["wall_s"] = round(time.perf_counter() - t0, 3)
            write_manifest(
                tmp,
                {
                    "stage": stage.name,
                    "key": key,
                    "key_hash": key_hash,
                    "result": result,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ctx.results[stage.name] = {**result, "_hash": key_hash}
        status[stage.name] = "ran"
    return status
