"""The pipeline: chains stages over a run directory, with atomic stage folders and `--resume`.

Each stage runs into a hidden temporary folder; only when it has finished are its outputs hashed
into a manifest and the folder renamed into place, so a stage folder is either complete or
absent, whatever kills the process. A stage's key hashes its config, the seed, the `data` keys it
reads (Stage.data_config) and the decoded data's content, the fingerprints (key + output hashes)
of the stages it reads and the library versions; `--resume` reuses a finished stage whose key is
unchanged and whose outputs still match their hashes, and redoes it and everything after it
otherwise.

Before anything in the run directory is touched, `open_run` checks every input the recipe names
(data, models, weights) so bad input fails fast and leaves an existing run as it was; it then
locks the directory, clears what killed runs left behind, and turns a full disk or exhausted
memory into the errors the CLI reports in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from edgecnn.core.artifacts import (
    disk_guard,
    json_sha256,
    outputs_intact,
    read_manifest,
    remove_leftovers,
    run_lock,
    write_manifest,
)
from edgecnn.core.environment import environment
from edgecnn.core.errors import UserError
from edgecnn.core.progress import log
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.preflight import preflight

VERSIONED = ("torch", "torch_pruning", "onnx", "onnxruntime", "litert_torch", "ai_edge_litert", "openvino", "nncf")
"""The libraries whose version is part of every stage key (a new converter or quantizer redoes the stage)."""


def _versions() -> dict:
    env = environment()
    return {k: env[k] for k in VERSIONED if k in env}


def stage_key(stage: Stage, ctx: Context) -> dict:
    """Everything a stage's output depends on."""
    recipe = ctx.recipe
    inputs = {s: ctx.results[s].get("_hash") for s in stage.reads if s in ctx.results}
    return {
        "stage": stage.name,
        "config": stage.config(recipe),
        "seed": recipe.seed,
        "data": stage.data_config(recipe),
        "data_sha256": ctx.data_sha256,
        "inputs": inputs,
        "versions": _versions(),
    }


def fingerprint(manifest: dict) -> str:
    """What later stages hash as this stage's input: its key and the hashes of its outputs."""
    return json_sha256({"key_hash": manifest.get("key_hash"), "outputs": manifest.get("outputs")})


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by the finished `tmp` folder (old folder renamed aside first, then removed).

    A kill between the two renames leaves the old folder under a `.NAME.old-PID` name, which the
    next run clears; the stage is then simply redone.
    """
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


# How libraries word a failed allocation; oneDNN fails to create a convolution primitive when it cannot
# allocate the primitive's scratch memory (seen under RLIMIT_AS in CI).
_OOM_MARKERS = ("can't allocate memory", "out of memory", "failed to allocate", "bad_alloc",
                "could not create a primitive")


@contextlib.contextmanager
def resource_guard(run_dir: Path) -> Iterator[None]:
    """Report a full disk as ENOSPC and exhausted memory as MemoryError, however a library words them."""
    try:
        with disk_guard(run_dir):
            yield
    except RuntimeError as e:
        if isinstance(e, UserError) or not any(m in str(e).lower() for m in _OOM_MARKERS):
            raise
        raise MemoryError(str(e).splitlines()[0][:200]) from e


_OPEN_RUNS: set[Path] = set()


@contextlib.contextmanager
def open_run(ctx: Context) -> Iterator[None]:
    """Check the recipe's inputs, then hold the run directory: locked, cleared of leftovers, guarded.

    Re-entrant, so `compress` can hold it across the stages and the report.
    """
    if not ctx.checked:
        preflight(ctx)
        ctx.checked = True
    run_dir = ctx.run_dir.resolve()
    if run_dir in _OPEN_RUNS:
        yield
        return
    with resource_guard(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            _OPEN_RUNS.add(run_dir)
            try:
                for name in remove_leftovers(run_dir):
                    log(f"[dim]removed {name}, left by an interrupted run[/dim]")
                yield
            finally:
                _OPEN_RUNS.discard(run_dir)


def run_stages(stages: list[Stage], ctx: Context, resume: bool) -> dict[str, str]:
    """Run or reuse each enabled stage in order; returns {stage: 'ran'|'reused'|'skipped'}."""
    status: dict[str, str] = {}
    with open_run(ctx):
        for stage in stages:
            final = ctx.stage_dir(stage.name)
            if final.exists() and (not final.is_dir() or any(final.iterdir())) and read_manifest(final) is None:
                raise UserError(
                    f"{final}: exists but is not a finished edgecnn stage, so it would be replaced; "
                    "move it away or choose another --out"
                )
        redo = False
        for stage in stages:
            if not stage.enabled(ctx.recipe):
                status[stage.name] = "skipped"
                continue
            key = stage_key(stage, ctx)
            key_hash = json_sha256(key)
            final = ctx.stage_dir(stage.name)
            manifest = read_manifest(final) if resume and not redo else None
            if (
                manifest
                and manifest.get("key_hash") == key_hash
                and isinstance(manifest.get("result"), dict)
                and outputs_intact(final, manifest)
            ):
                ctx.results[stage.name] = {**manifest["result"], "_hash": fingerprint(manifest)}
                status[stage.name] = "reused"
                log(f"[dim]{stage.name}: reused (finished earlier, inputs unchanged)[/dim]")
                continue
            redo = True
            ctx.results[stage.name] = _run_one(stage, ctx, key, key_hash)
            status[stage.name] = "ran"
    return status


def seed_everything(seed: int, stage: str) -> None:
    """Seed every global RNG for one stage, so its model initialisation and sampling repeat exactly.

    Derived from the recipe's seed and the stage's name only, so a stage run alone by `--resume`
    starts from the same random state as in an uninterrupted run.
    """
    import random

    import numpy as np
    import torch

    s = int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little")
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _run_one(stage: Stage, ctx: Context, key: dict, key_hash: str) -> dict:
    """Run one stage into its temporary folder, record its manifest, swap it into place."""
    tmp = ctx.run_dir / f".{stage.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"[bold cyan]{stage.name}[/bold cyan]: running")
    seed_everything(ctx.recipe.seed, stage.name)
    t0 = time.perf_counter()
    try:
        result = stage.run(ctx, tmp)
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        manifest = write_manifest(
            tmp,
            {
                "stage": stage.name,
                "key": key,
                "key_hash": key_hash,
                "result": result,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        _swap_in(tmp, ctx.stage_dir(stage.name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**result, "_hash": fingerprint(manifest)}
