"""Choosing an int8 model by measurement: candidates, their accuracy and latency, the winner.

Every candidate file is measured by the agent (edgecnn/runtime/agent.py, in its own process) on the
validation and test images and at batch 1, exactly as the bench stage measures it; the files that
could win are then timed again side by side (`retime`). The winner is the fastest candidate within
the accuracy budget on the validation split (`val_accuracy`; the test accuracy is only reported);
it is deployed only where it beats fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.analysis.selection import time_again, within_budget
from edgecnn.config.recipe import BenchConfig, OnnxQuantConfig, OpenvinoQuantConfig
from edgecnn.runtime.host import run_agent_local

# What `select: auto` tries besides the recipe's own ONNX config (per-channel int8 weights throughout).
ONNX_AUTO = [
    {"format": "qdq", "activation": "uint8", "method": "minmax"},
    {"format": "qoperator", "activation": "uint8", "method": "minmax"},
    {"format": "qdq", "activation": "int8", "method": "minmax"},
    {"format": "qdq", "activation": "uint8", "method": "percentile"},
    {"format": "qdq", "activation": "uint8", "method": "entropy"},
]


def onnx_candidates(cfg: OnnxQuantConfig, select: str) -> list[dict]:
    """The ONNX int8 configs to try: the recipe's, then (auto) the usual alternatives, without repeats."""
    base = cfg.model_dump()
    out = [base]
    if select == "auto":
        for c in ONNX_AUTO:
            cand = {**base, "per_channel": True, "weight": "int8", **c}
            if cand not in out:
                out.append(cand)
    return out


def openvino_candidates(cfg: OpenvinoQuantConfig, select: str) -> list[dict]:
    """The NNCF int8 configs to try: the recipe's preset, then (auto) the other one."""
    base = {"preset": cfg.preset, "subset_size": cfg.subset_size, "fast_bias_correction": cfg.fast_bias_correction}
    others = [p for p in ("performance", "mixed") if p != cfg.preset] if select == "auto" else []
    return [base] + [{**base, "preset": p} for p in others]


def describe(config: dict) -> str:
    """A short label, e.g. `qdq u8-act minmax per-channel` (`+ 2 float layers` for a mixed-precision file)."""
    n = len(config.get("float_layers") or ())
    return _describe(config) + (f" + {n} float layer{'s' * (n != 1)}" if n else "")


def _describe(config: dict) -> str:
    if "inference_precision" in config:
        return f"{config['inference_precision']} inference"
    if "preset" in config:
        full = "" if config.get("fast_bias_correction", True) else " full-bias-correction"
        return f"nncf {config['preset']}{full}"
    if "format" not in config:
        return f"pt2e {config.get('io', 'int8')}-io" + (" per-channel" if config.get("per_channel") else "")
    act = {"uint8": "u8", "int8": "s8"}[config["activation"]]
    pc = " per-channel" if config["per_channel"] else ""
    rr = " reduce-range" if config.get("reduce_range") == "true" else ""
    return f"{config['format']} {act}-act {config['method']}{pc}{rr}"


def _agent(path: Path, npz: Path, bench: BenchConfig, decoder: Path | None, logits_out: Path | None = None) -> dict:
    return run_agent_local(path, npz, threads=bench.threads, warmup=bench.warmup, min_iters=bench.min_iters,
                           min_seconds=min(bench.min_seconds, 0.5), logits_out=logits_out, decoder=decoder)


def measure(path: Path, npz: Path, bench: BenchConfig, logits_out: Path, decoder: Path | None = None) -> dict:
    """Raw outputs (every image of `npz`; `logits`), accuracy (classification) and batch-1 latency of one file,
    by the agent (a detector's batch decoded there by `decoder`)."""
    m = _agent(path, npz, bench, decoder, logits_out)
    return {
        "path": path,
        "accuracy": m["accuracy"],
        "latency_ms": m["latency_ms"],
        "p50_ms": m["latency_ms"]["p50"],
        "threads": m["threads"],
        "size_bytes": m["size_bytes"],
        "inference_precision": m.get("inference_precision"),
        "logits": np.load(logits_out),
    }


def retime(files: list[dict], timing_npz: Path, bench: BenchConfig, decoder: Path | None = None) -> None:
    """Time measured files (`measure` results) again in alternating rounds on `timing_npz` (one image,
    write_timing_npz), as the bench stage does (`time_again`); each keeps its best round's `latency_ms` and
    `p50_ms` and lists its rounds in `latency_rounds_p50_ms`."""
    time_again(files, lambda f: _agent(f["path"], timing_npz, bench, decoder)["latency_ms"])
    for f in files:
        f["p50_ms"] = f["latency_ms"]["p50"]


def choose(candidates: list[dict], reference_accuracy: float, budget: float, key: str = "val_accuracy") -> dict | None:
    """The fastest candidate losing at most `budget` top-1 (its `key`, the validation accuracy) against the
    reference's; None if none does."""
    ok = [c for c in candidates if within_budget(reference_accuracy, c[key], budget)]
    return min(ok, key=lambda c: c["p50_ms"]) if ok else None
