"""Batch-1 latency of several model files side by side on this machine, in alternating rounds.

On a shared host the speed drifts by 10-30% within minutes; timing every file once in a fixed order
would turn that drift into a difference between files. Each round times every file at every thread
count through the benchmark agent (one process per measurement, one-thread runs pinned); the file
order and the thread order flip every other round, and each file keeps the best p50 of its rounds.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

from edgecnn.runtime.host import run_agent_local


def alternating_rounds(files: dict[Hashable, Path], npz: Path, settings: list[int], rounds: int,
                       seconds: float) -> dict[Hashable, dict[str, list[float]]]:
    """Each file's p50 (ms) per thread count (str) and round, keyed as `files` is."""
    keys = list(files)
    out: dict[Hashable, dict[str, list[float]]] = {k: {} for k in keys}
    for r in range(rounds):
        for threads in settings if r % 2 == 0 else settings[::-1]:
            for key in keys if r % 2 == 0 else keys[::-1]:
                m = run_agent_local(files[key], npz, threads=threads, min_iters=100, min_seconds=seconds)
                out[key].setdefault(str(threads), []).append(m["latency_ms"]["p50"])
                label = " ".join(key) if isinstance(key, tuple) else str(key)
                print(f"round {r + 1} {label:32s} {threads:2d}t p50 {m['latency_ms']['p50']:.3f} ms", flush=True)
    return out


def best_p50(rounds: dict[str, list[float]]) -> dict[str, float]:
    """The lowest p50 of each thread count's rounds."""
    return {t: min(v) for t, v in rounds.items()}
