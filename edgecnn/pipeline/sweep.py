"""Recipe sweeps: variants run in a process pool (or on Ray), sharing the stages they have in common.

A variant is the recipe with some dotted keys set (`sweep.grid` and/or `sweep.variants`). Variants
whose recipes agree on every stage up to stage k (config, seed, data) would compute the same
stage-k folder, so each such group runs that prefix once in RUN/shared/<k>-<stage>-<hash>/, seeded
with hard links of its parent group's finished stage folders; the finished folders are then linked
into every member's RUN/variants/<name>/, where the pipeline's `--resume` logic reuses them (their
keys match: a stage key hashes config, seed, data and its inputs' manifests, never the folder).
A variant whose report.json already holds its resolved recipe is finished and is not run again,
so an interrupted sweep resumes where it stopped. Stages that time models (TIMED_STAGES) start only
once every variant's training stages are done, and each timing leases its own CPU
(edgecnn.runtime.host.cpu_lease), so no two concurrent timings share a core and none runs beside a
training run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgecnn.config.recipe import Recipe, recipe_dict, set_dotted, validation_message
from edgecnn.core.artifacts import json_sha256, outputs_intact, read_manifest, run_lock
from edgecnn.core.errors import UserError
from edgecnn.core.progress import log

TIMED_STAGES = ("quantize", "bench")
"""Stages that time models (with the agent, on leased CPUs): a sweep starts them only once every variant's
training stages are done, so no timing shares the machine with a training run."""


@dataclass
class Variant:
    """One variant: its name, the keys it sets and its validated recipe."""

    name: str
    assignments: dict[str, Any]
    recipe: Recipe
    shared_from: Path | None = None
    status: str = "pending"
    wall_s: float | None = None


@dataclass
class SharedJob:
    """A stage prefix that several variants share, run once in `folder`."""

    folder: Path
    upto: int
    members: list[str]
    parent: Path | None
    recipe: Recipe


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = text.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "x"


def _variant_name(assignments: dict[str, Any], all_keys: list[str]) -> str:
    last = [k.split(".")[-1] for k in all_keys]
    parts = []
    for k, v in assignments.items():
        label = k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k.replace(".", "_")
        parts.append(f"{label}{_short(v)}")
    return "-".join(parts)


def plan_variants(recipe: Recipe, base: Path) -> list[Variant]:
    """Every variant the recipe's `sweep` section names, validated (UserError naming the variant)."""
    sw = recipe.sweep
    if sw is None:
        raise UserError("the recipe has no sweep section")
    grid_keys = list(sw.grid)
    points = [dict(zip(grid_keys, combo, strict=True)) for combo in itertools.product(*sw.grid.values())] or [{}]
    entries = [dict(v) for v in sw.variants] or [{}]
    all_keys = sorted({k for e in entries for k in e if k != "name"} | set(grid_keys))
    resolved = recipe_dict(recipe)
    resolved["sweep"] = None
    variants, seen = [], {}
    for entry, point in itertools.product(entries, points):
        explicit = entry.get("name")
        assignments = {**{k: v for k, v in entry.items() if k != "name"}, **point}
        auto = _variant_name(point if explicit is not None else assignments, all_keys)
        name = ("-".join(x for x in (_short(explicit) if explicit is not None else "", auto) if x))[:64] or "base"
        if name in seen:
            raise UserError(f"sweep: variants {seen[name]} and {assignments} are both named {name!r}; "
                            "give list entries distinct `name`s")
        seen[name] = assignments
        raw = json.loads(json.dumps(resolved))
        for k, v in assignments.items():
            set_dotted(raw, k, v, base, "sweep:")
        raw["name"] = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) else recipe.name
        try:
            rec = Recipe.model_validate(raw)
        except ValidationError as e:
            raise UserError(validation_message(e, f"sweep variant {name}")) from None
        variants.append(Variant(name, assignments, rec))
    return variants


def _prefix_signature(recipe: Recipe, k: int) -> str:
    from edgecnn.pipeline.stages.registry import default_stages

    parts: list[Any] = [recipe.seed]
    for s in default_stages()[: k + 1]:
        on = s.enabled(recipe)
        parts.append([s.name, on, [s.config(recipe), s.data_config(recipe)] if on else None])
    return json_sha256(parts)


def plan_shared(variants: list[Variant], run_dir: Path, upto: int | None = None) -> list[list[SharedJob]]:
    """Shared prefix jobs, level by level (teacher, distill, ...): groups of >= 2 variants agreeing so far.

    Only stages before `upto` are shared (by default every stage but bench); a sweep shares only its
    untimed stages, so shared jobs never time a model while others train.
    """
    from edgecnn.pipeline.stages.registry import default_stages

    stages = default_stages()
    levels: list[list[SharedJob]] = []
    latest: dict[str, SharedJob] = {}
    for k, stage in enumerate(stages[: len(stages) - 1 if upto is None else upto]):
        groups: dict[str, list[Variant]] = {}
        for v in variants:
            groups.setdefault(_prefix_signature(v.recipe, k), []).append(v)
        jobs = []
        for sig, members in groups.items():
            if len(members) < 2 or not stage.enabled(members[0].recipe):
                continue
            names = [m.name for m in members]
            parent = latest.get(names[0])
            if parent is not None and parent.members == names:  # same group as before: one job runs both
                parent.upto = k + 1
                continue
            folder = run_dir / "shared" / f"{k}-{stage.name}-{sig[:12]}"
            job = SharedJob(folder, k + 1, names, parent and parent.folder, members[0].recipe)
            jobs.append(job)
            for m in members:
                latest[m.name] = job
                m.shared_from = folder
        if jobs:
            levels.append(jobs)
    return levels


def link_stages(src: Path, dst: Path) -> list[str]:
    """Hard-link (or copy) every finished stage folder of run dir `src` into run dir `dst`.

    A stage already finished in `dst` with the same key and intact outputs is left alone; any other
    is replaced atomically (built under a hidden name, then swapped in).
    """
    from edgecnn.pipeline.runner import _swap_in

    linked = []
    dst.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = read_manifest(folder)
        if manifest is None or "key_hash" not in manifest:
            continue
        target = dst / folder.name
        have = read_manifest(target)
        if have and have.get("key_hash") == manifest["key_hash"] and outputs_intact(target, have):
            if have.get("outputs") == manifest.get("outputs"):
                continue
        tmp = dst / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(folder, tmp, copy_function=_link_or_copy)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap_in(tmp, target)
        linked.append(folder.name)
    return linked


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def variant_finished(v: Variant, folder: Path) -> bool:
    """True when the variant's report.json exists and was made from this very recipe."""
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return report.get("recipe") == recipe_dict(v.recipe)


# ---- what a worker runs --------------------------------------------------------------------------


def _init_worker(threads: int) -> None:
    """Pool worker set-up: die with the parent (a killed sweep leaves no orphan holding a run lock)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    import torch

    torch.set_num_threads(threads)


def run_job(recipe_json: dict, run_dir: str, upto: int | None, threads: int | None = None,
            earlier: dict[str, str] | None = None) -> dict:
    """Run stages 0..upto-1 (a shared prefix) or the whole pipeline and report (upto None) in `run_dir`.

    `earlier`: the status of an earlier job of this variant in the same sweep (its untimed stages), so
    stages that job ran are reported as ran, not reused.
    """
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.run_report import write_run_report
    from edgecnn.pipeline.runner import open_run, run_stages
    from edgecnn.pipeline.stages.registry import default_stages

    if threads:
        import torch

        torch.set_num_threads(threads)
    rec = Recipe.model_validate(recipe_json)
    ctx = Context(rec, Path(run_dir))
    t0 = time.perf_counter()
    if upto is not None:
        status = run_stages(default_stages()[:upto], ctx, resume=True)
        return {"status": status, "wall_s": round(time.perf_counter() - t0, 3)}
    with open_run(ctx):
        status = run_stages(default_stages(), ctx, resume=True)
        status = {s: "ran" if st == "reused" and (earlier or {}).get(s) == "ran" else st for s, st in status.items()}
        write_run_report(ctx, status)
    return {"status": status, "wall_s": round(time.perf_counter() - t0, 3)}


# ---- backends ------------------------------------------------------------------------------------


Job = tuple[str, dict, str, int | None, dict | None]  # label, recipe json, run dir, upto, earlier status


class PoolBackend:
    """A local process pool (spawned workers that die with the sweep)."""

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(self.threads,))

    def run(self, jobs: list[Job], done: Callable[[str, dict | None, BaseException | None], None]) -> None:
        from concurrent.futures import as_completed

        futures = {self._pool.submit(run_job, rj, rd, upto, self.threads, earlier): label
                   for label, rj, rd, upto, earlier in jobs}
        for f in as_completed(futures):
            exc = f.exception()
            done(futures[f], None if exc else f.result(), exc)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayBackend:
    """Variants as Ray tasks (one CPU each) on a cluster whose nodes share the run directory's file system."""

    def __init__(self, address: str, workers: int):
        try:
            import ray
        except ImportError:
            raise UserError("--ray: ray is not installed; pip install 'edgecnn[ray]'") from None
        self.ray, self.workers = ray, workers
        self._started = False
        if not ray.is_initialized():
            kw = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True}
            try:
                if address == "auto":
                    try:
                        ray.init(address="auto", **kw)
                    except ConnectionError:
                        ray.init(num_cpus=workers, **kw)  # no cluster running: a local one
                else:
                    ray.init(address=address, **kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"--ray {address}: cannot reach a Ray cluster ({str(e).splitlines()[0][:150]}); "
                                "start one with `ray start --head` or use --ray auto") from None
            self._started = True
        self._remote = ray.remote(num_cpus=1)(run_job)

    def run(self, jobs: list[Job], done: Callable[[str, dict | None, BaseException | None], None]) -> None:
        pending = {self._remote.remote(rj, rd, upto, 1, earlier): label for label, rj, rd, upto, earlier in jobs}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            label = pending.pop(ready[0])
            try:
                done(label, self.ray.get(ready[0]), None)
            except Exception as e:  # noqa: BLE001 - a task's own exception, re-raised as its cause below
                cause = getattr(e, "cause", None)
                done(label, None, cause if isinstance(cause, BaseException) else e)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


# ---- the sweep -----------------------------------------------------------------------------------


def run_sweep(recipe: Recipe, base: Path, run_dir: Path, force: bool = False, workers: int | None = None,
              ray_address: str | None = None) -> dict:
    """Run every variant of `recipe` into run_dir/variants/<name>/, then compare them; returns sweep.json's content."""
    from edgecnn.analysis.compare import compare_runs
    from edgecnn.core.artifacts import atomic_write_json
    from edgecnn.pipeline.stages.registry import default_stages

    variants = plan_variants(recipe, base)
    timed_from = next(i for i, s in enumerate(default_stages()) if s.name in TIMED_STAGES)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with run_lock(run_dir):
        if force:
            shutil.rmtree(run_dir / "shared", ignore_errors=True)
            for v in variants:
                shutil.rmtree(run_dir / "variants" / v.name, ignore_errors=True)
        todo = []
        for v in variants:
            if variant_finished(v, run_dir / "variants" / v.name):
                v.status = "finished earlier"
                log(f"[dim]variant {v.name}: finished earlier, kept[/dim]")
            else:
                todo.append(v)
        n = workers or recipe.sweep.workers or min(len(todo) or 1, os.cpu_count() or 1)
        levels = plan_shared(todo, run_dir, timed_from)
        errors: list[tuple[str, BaseException]] = []
        if todo:
            backend = RayBackend(ray_address, n) if ray_address else PoolBackend(n)
            log(f"sweep: {len(variants)} variants ({len(todo)} to run), {sum(map(len, levels))} shared stage "
                f"prefixes, {n} {'Ray tasks' if ray_address else 'workers'}")
            try:
                for jobs in levels:
                    batch = []
                    for j in jobs:
                        if j.parent is not None:
                            link_stages(j.parent, j.folder)
                        batch.append((f"shared {j.folder.name} ({', '.join(j.members)})", recipe_dict(j.recipe),
                                      str(j.folder), j.upto, None))
                    _run_batch(backend, batch, errors, {})
                    if errors:
                        break
                if not errors:
                    untimed = []
                    for v in todo:
                        vdir = run_dir / "variants" / v.name
                        if v.shared_from is not None:
                            link_stages(v.shared_from, vdir)
                        untimed.append((f"{v.name} (untimed stages)", recipe_dict(v.recipe), str(vdir), timed_from,
                                        None))
                    first = _run_batch(backend, untimed, errors, {})
                    if not errors:
                        timed = [(v.name, rj, vdir, None, first[label]["status"])
                                 for v, (label, rj, vdir, *_) in zip(todo, untimed, strict=True)]
                        _run_batch(backend, timed, errors, {v.name: v for v in todo})
                        for v, (label, *_) in zip(todo, untimed, strict=True):
                            if v.wall_s is not None:
                                v.wall_s = round(v.wall_s + first[label]["wall_s"], 3)
            finally:
                backend.close()
        done = [v for v in variants if v.status in ("ran", "finished earlier")]
        summary = {
            "recipe": recipe.name,
            "backend": ("ray " + ray_address) if ray_address else "process pool",
            "workers": n,
            "wall_s": round(time.perf_counter() - t0, 3),
            "variants": [{"name": v.name, "set": v.assignments, "status": v.status, "wall_s": v.wall_s,
                          "shared_from": v.shared_from and str(v.shared_from.relative_to(run_dir)),
                          "path": f"variants/{v.name}"} for v in variants],
            "timing": "timed stages (" + ", ".join(TIMED_STAGES) + ") start after every variant's training stages; "
                      "each timing runs on CPUs leased for it alone",
            "shared": [{"folder": str(j.folder.relative_to(run_dir)), "stages_upto": j.upto, "members": j.members}
                       for jobs in levels for j in jobs],
        }
        atomic_write_json(run_dir / "sweep.json", summary)
        if errors:
            label, exc = errors[0]
            if isinstance(exc, UserError):
                raise UserError(f"sweep {label}: {exc} (finished variants are kept; rerun with --resume)")
            raise exc
        summary["compare"] = compare_runs([run_dir / "variants" / v.name for v in done], run_dir)
    return summary


def _run_batch(backend, batch: list[Job], errors: list, variants: dict[str, Variant]) -> dict[str, dict]:
    """Run one batch of jobs in parallel; returns each finished job's result (status, wall_s) by label."""
    results: dict[str, dict] = {}

    def done(label: str, result: dict | None, exc: BaseException | None) -> None:
        if exc is not None:
            errors.append((label, exc))
            log(f"[red]{label}: failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}[/red]")
            return
        results[label] = result
        if label in variants:
            variants[label].status, variants[label].wall_s = "ran", result["wall_s"]
        ran = [s for s, st in result["status"].items() if st == "ran"]
        log(f"{label}: done in {result['wall_s']:.1f} s (ran: {', '.join(ran) or 'nothing'})")

    if batch:
        backend.run(batch, done)
    return results
