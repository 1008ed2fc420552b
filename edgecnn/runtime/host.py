"""Host-side runtime helpers: evaluation batches, the agent run locally, CPU leases and parity checks.

Scores and latency of every file are measured by `edgecnn/runtime/agent.py`, the same file that runs
on remote devices; locally it runs in its own process so peak memory is the inference process's.
A decoding task's batch (a detector's, a keypoint model's) carries the task's name and head spec,
and the agent decodes the outputs with the task's numpy decoder (`Task.decoder_file`, passed as
--decoder); the host scores the agent's predictions (`agent_scores`).
Every local timing first leases its CPUs (`cpu_lease`: one lock file per CPU, held with flock, so
concurrent edgecnn processes of this user respect it) and pins the agent to them, so no two
concurrent timings share a core.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecnn.analysis.stats import classification_fields
from edgecnn.core.artifacts import atomic_path, atomic_write_bytes
from edgecnn.core.errors import StageFailed
from edgecnn.data.datasets import Dataset, Split
from edgecnn.runtime import agent
from edgecnn.tasks.base import Task

AGENT_PATH = Path(agent.__file__)


MEASURED = ("eval_samples", "latency_ms", "e2e_latency_ms", "peak_memory_mb", "load_ms", "runtime",
            "inference_precision", "providers", "threads", "cpus", "batch_size")
"""The fields of an agent's result that a report entry takes over as they are."""


def measured(m: dict, scores: dict | None = None) -> dict:
    """The report fields of one agent result (see MEASURED) with its task, score and metrics: `scores` (a
    decoding task's, from the agent's predictions), else classification's top-1 (`accuracy`, with its 95% interval)."""
    if scores is None:
        scores = {"accuracy": m["accuracy"], **classification_fields(m["accuracy"], m["eval_samples"])}
    return {**{k: m.get(k) for k in MEASURED}, **scores}


def write_eval_npz(data: Dataset, split: Split, path: Path, head: dict | None = None, task: str | None = None) -> None:
    """The evaluation batch shipped to the agent: uint8 images, targets, normalisation and, for a task that decodes
    (a head other than logits), the task's name (None: detection, as batches before keypoints) and head spec."""
    extra = {} if head is None or head.get("kind") == "logits" else {"head": np.array(json.dumps(head))}
    if extra:
        extra["task"] = np.array(task or "detection")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                x=split.x.numpy(),
                y=split.y.numpy(),
                mean=np.array(data.mean, np.float32),
                std=np.array(data.std, np.float32),
                **extra,
            )


def write_timing_npz(npz: Path, path: Path) -> None:
    """A batch of the first image of evaluation batch `npz` (same normalisation and head): for timing only, so
    the agent's scoring pass costs one image."""
    with np.load(npz) as z:
        arrays = {k: z[k][:1] if k in ("x", "y") else z[k] for k in z.files}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """Trace a model to TorchScript (how PyTorch models are benchmarked by the agent)."""
    model = model.eval()
    from edgecnn.models.files import torch_bytes

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, torch.zeros(1, *input_shape))
        atomic_write_bytes(path, torch_bytes(lambda f: torch.jit.save(traced, f)))


def _lease_dir() -> Path:
    """Where the CPU lock files live: $EDGECNN_CPU_LEASES, else one folder per user in the temp dir."""
    d = Path(os.environ.get("EDGECNN_CPU_LEASES") or Path(tempfile.gettempdir()) / f"edgecnn-cpus-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (empty where the OS cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


@contextlib.contextmanager
def cpu_lease(count: int = 1, timeout: float = 3600.0) -> Iterator[list[int]]:
    """Hold `count` of this process's CPUs that no other edgecnn timing holds, for the `with` block.

    One lock file per CPU, locked with flock (released by the kernel if the holder dies). The last
    CPUs are tried first; when too few are free the partial lease is dropped and retried, so two
    waiting leases never deadlock. Yields the CPU numbers ([] where affinity is unknown).
    """
    cpus = allowed_cpus()
    if not cpus:
        yield []
        return
    count = max(1, min(count, len(cpus)))
    folder = _lease_dir()
    deadline = time.monotonic() + timeout
    held: list[tuple[int, int]] = []
    try:
        while True:
            for cpu in reversed(cpus):
                if len(held) == count:
                    break
                fd = os.open(folder / f"cpu{cpu}.lock", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append((cpu, fd))
                except OSError:
                    os.close(fd)
            if len(held) == count:
                break
            _release(held)
            if time.monotonic() > deadline:
                raise StageFailed(f"no free CPU to time on for {timeout:.0f} s: other edgecnn timings hold "
                                  f"CPUs {cpus} (lock files in {folder})")
            time.sleep(0.05)
        yield sorted(cpu for cpu, _ in held)
    finally:
        _release(held)


@contextlib.contextmanager
def pinned_thread(cpus: list[int]) -> Iterator[None]:
    """Run the calling thread on `cpus` for the `with` block (in-process timing on a leased CPU), then restore it."""
    before = allowed_cpus()
    try:
        if cpus:
            os.sched_setaffinity(0, set(cpus))
    except OSError:
        before = []
    try:
        yield
    finally:
        if before and cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(before))


def _release(held: list[tuple[int, int]]) -> None:
    for _, fd in held:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    held.clear()


def run_agent_local(
    model: Path,
    npz: Path,
    *,
    threads: int = 1,
    runtime: str = "auto",
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 1.0,
    logits_out: Path | None = None,
    timeout: float = 1800,
    decoder: Path | None = None,
    predictions_out: Path | None = None,
) -> dict:
    """Run the agent on this machine in a fresh process, on CPUs leased for it (`cpu_lease`), and return its JSON.

    `decoder` and `predictions_out`: a decoding task's batch (write_eval_npz with its head) is decoded by
    that file (the task's decode.py) and its predictions saved there."""
    cmd = [
        sys.executable,
        str(AGENT_PATH),
        "--model",
        str(model),
        "--data",
        str(npz),
        "--threads",
        str(threads),
        "--runtime",
        runtime,
        "--warmup",
        str(warmup),
        "--min-iters",
        str(min_iters),
        "--min-seconds",
        str(min_seconds),
    ]
    if logits_out is not None:
        cmd += ["--logits-out", str(logits_out)]
    if decoder is not None:
        cmd += ["--decoder", str(decoder)]
    if predictions_out is not None:
        cmd += ["--predictions-out", str(predictions_out)]
    with cpu_lease(threads if threads > 0 else len(allowed_cpus()) or 1) as cpus:
        if cpus:
            cmd += ["--cpu", ",".join(map(str, cpus))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageFailed(f"{model}: the benchmark agent failed ({tail[:200]})") from None
    if "error" in result:
        raise StageFailed(f"{model}: the benchmark agent failed ({result['error'][:300]})")
    return result


def runtime_outputs(path: Path, data: Dataset, split: Split, threads: int = 1) -> np.ndarray:
    """Raw outputs of a model file on a split, in this process, through the agent's code."""
    rt = agent.open_runtime(str(path), threads)
    return agent.raw_outputs(rt, split.x.numpy(), np.array(data.mean, np.float32), np.array(data.std, np.float32))


def runtime_logits(path: Path, data: Dataset, split: Split, threads: int = 1) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and logits of a classifier file on a split, in this process, through the agent's code."""
    logits = runtime_outputs(path, data, split, threads).reshape(len(split), -1)
    return float((logits.argmax(1) == split.y.numpy()).mean()), logits


def parity(task: Task, raw: np.ndarray, reference: np.ndarray, split: Split, head: dict, reference_name: str) -> dict:
    """How raw outputs agree with a reference's on a split (Task.parity: top-1 agreement, matched detections,
    keypoints within half a heatmap cell),
    named after the reference."""
    return {"reference": reference_name, **task.parity(raw, reference, split.y, head)}


def agent_scores(task: Task, predictions: Path, split: Split, head: dict) -> dict:
    """A report entry's task, score and metrics from the predictions the agent decoded and saved."""
    with np.load(predictions) as z:
        preds = task.agent_predictions(dict(z))
    metrics = task.metrics(preds, split.y, head)
    return {"task": task.name, "score": task.score(metrics), "metrics": metrics}
