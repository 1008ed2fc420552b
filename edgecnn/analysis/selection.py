"""The deployed file of a device: across runtimes and precisions, the fastest whose score is within budget.

Scores are the ones decisions are made on (the validation split of the export and quantize stages,
measured by the agent); latencies are batch-1 p50s measured on the device itself. A size limit
(`bench.max_size_kb`), when set, keeps larger files from being deployed. The result lists every
candidate with its runtime, precision, score, p50 and size, and says why the winner won.

Files timed once, one after another, are compared across minutes in which a shared host's speed
drifts by 10-30%, enough to flip a pick. So every pick (the quantize stage's within a runtime, the
bench stage's and `edgecnn deploy`'s across runtimes) first times each file once, then times the
files that could win (`contenders`, `could_win`) again in CONFIRM_ROUNDS alternating rounds
(`alternating_rounds`, `time_again`: order flipped each round) and keeps each one's best round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

# Accuracies are float32 ratios (0.97 is 0.9700000286...): a loss equal to the budget must pass.
ACCURACY_TOLERANCE = 1e-6


def within_budget(reference_accuracy: float, accuracy: float, budget: float) -> bool:
    """True when `accuracy` loses at most `budget` top-1 against the reference."""
    return reference_accuracy - accuracy <= budget + ACCURACY_TOLERANCE


def _label(c: dict) -> str:
    return f"{c['format']} {c['precision']} ({c['runtime'] or c['format']})"


def _kb(size_bytes: int | None) -> str:
    return "size unknown" if size_bytes is None else f"{size_bytes / 1024:.1f} KB"


def within_size(size_bytes: int | None, max_size_kb: float | None) -> bool:
    """True when there is no limit, or the file's size is known and at most `max_size_kb` KB (1,024 bytes)."""
    return max_size_kb is None or (size_bytes is not None and size_bytes <= max_size_kb * 1024)


def eligible(row: dict) -> bool:
    """A candidate row that may be deployed: measured, within the accuracy budget and the size limit."""
    return row["within_budget"] and row["within_size"] and row["p50_ms"] is not None


CONFIRM_ROUNDS = 2
"""Alternating rounds of extra timing for the files that could win a pick."""
CONTENDER_SPREAD = 1.5
"""Files within this factor of the fastest eligible p50 are timed again (a slow spell once read 1.25x)."""

T = TypeVar("T")


def near_fastest(p50s: list[float]) -> list[int]:
    """Indices of the p50s within CONTENDER_SPREAD of the smallest (none for an empty list)."""
    return [i for i, p in enumerate(p50s) if p <= CONTENDER_SPREAD * min(p50s)] if p50s else []


def contenders(rows: list[dict]) -> list[int]:
    """Indices of a first pick's candidate rows that could win: eligible, within CONTENDER_SPREAD of the fastest."""
    ok = [i for i, r in enumerate(rows) if eligible(r)]
    return [ok[i] for i in near_fastest([rows[i]["p50_ms"] for i in ok])]


def alternating_rounds(n: int, time_one: Callable[[int], T], rounds: int = CONFIRM_ROUNDS) -> list[list[T]]:
    """`time_one(i)` for i in 0..n-1, `rounds` times, in reversed then forward order by turns; per i, its results."""
    out: list[list[T]] = [[] for _ in range(n)]
    for r in range(rounds):
        for i in (range(n - 1, -1, -1) if r % 2 == 0 else range(n)):
            out[i].append(time_one(i))
    return out


def could_win(pick: dict | None, entries: list[dict]) -> list[dict]:
    """The entries (those `pick` was made of, in its order) that could win it; none unless two or more could."""
    keep = contenders(pick["candidates"]) if pick and pick["chosen"] else []
    return [entries[i] for i in keep] if len(keep) >= 2 else []


def time_again(entries: list[dict], time_one: Callable[[dict], dict]) -> None:
    """Time report entries again in CONFIRM_ROUNDS alternating rounds (`time_one`: an entry's agent `latency_ms`).
    Each entry's `latency_rounds_p50_ms` gets its rounds and it keeps its best round's `latency_ms`; if a round
    raises, no entry changes."""
    rounds = alternating_rounds(len(entries), lambda i: time_one(entries[i]))
    for e, again in zip(entries, rounds, strict=True):
        e.setdefault("latency_rounds_p50_ms", [e["latency_ms"]["p50"]]).extend(lat["p50"] for lat in again)
        e["latency_ms"] = min([e["latency_ms"], *again], key=lambda lat: lat["p50"])


def pick_deployment(
    entries: list[dict], reference: float | None, budget: float, device: str, max_size_kb: float | None = None
) -> dict | None:
    """The deployment of one device from its measured model entries.

    Each entry has name, format, precision, path, size_bytes, runtime, latency_ms, accuracy (as
    measured on the device) and `decision_score` (None when unknown: then only the p50 counts). Each
    row's `score` is that decision score. Entries without a p50, or larger than `max_size_kb`, are
    listed, never chosen. None when there is no entry at all.
    """
    if not entries:
        return None
    rows = []
    for e in entries:
        p50 = (e.get("latency_ms") or {}).get("p50")
        score = e.get("decision_score")
        ok = reference is None or score is None or within_budget(reference, score, budget)
        rows.append({
            "name": e["name"], "format": e["format"], "runtime": e.get("runtime"), "precision": e["precision"],
            "inference_precision": e.get("inference_precision"), "path": e.get("path"),
            "size_bytes": e.get("size_bytes"), "score": score, "accuracy": e.get("accuracy"), "p50_ms": p50,
            "within_budget": ok, "within_size": within_size(e.get("size_bytes"), max_size_kb), "chosen": False,
        })
    ranked = sorted(filter(eligible, rows), key=lambda r: r["p50_ms"])
    out = {"device": device, "reference_score": reference, "budget": budget, "max_size_kb": max_size_kb,
           "candidates": rows}
    limit = "" if max_size_kb is None else f" and {max_size_kb:g} KB"
    if not ranked:
        out.update(chosen=None, reason=f"no candidate on {device} has a p50 and a score within the budget{limit}")
        return out
    best = ranked[0]
    best["chosen"] = True
    reason = (f"{_label(best)} of {best['name']} is the fastest of {len(ranked)} candidate(s) within the "
              f"{100 * budget:.2f}-point budget{limit} on {device}: p50 {best['p50_ms']:.3f} ms")
    if len(ranked) > 1:
        second = ranked[1]
        reason += (f", {second['p50_ms'] / best['p50_ms']:.2f}x faster than the next, {_label(second)} "
                   f"({second['p50_ms']:.3f} ms)")
    if best["score"] is not None and reference is not None:
        reason += f"; validation score {best['score']:.4f} against {reference:.4f} for fp32 PyTorch"
    over = [r for r in rows if not r["within_budget"]]
    if over:
        reason += "; over the budget on validation: " + ", ".join(
            f"{_label(r)} ({100 * (r['score'] - reference):+.2f} points)" for r in over
        )
    large = [r for r in rows if not r["within_size"]]
    if large:
        reason += f"; over {max_size_kb:g} KB: " + ", ".join(f"{_label(r)} ({_kb(r['size_bytes'])})" for r in large)
    out.update(chosen={k: best[k] for k in ("name", "format", "runtime", "precision", "path")}, reason=reason)
    return out


def note_retimed(pick: dict | None, entries: list[dict]) -> None:
    """Add to a pick's reason how many of its files' p50s are the best of several rounds (`latency_rounds_p50_ms`)."""
    retimed = sum(len(e.get("latency_rounds_p50_ms") or ()) > 1 for e in entries)
    if pick and pick["chosen"] and retimed:
        pick["reason"] += (f"; the p50s of the {retimed} files that could win are each the best of "
                           f"{1 + CONFIRM_ROUNDS} alternating rounds")
