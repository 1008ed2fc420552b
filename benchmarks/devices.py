"""The quickstart's models on every device this machine can reach, and latency stability.

    flock /tmp/edgecnn-cpu.lock python benchmarks/devices.py   # writes devices.json and devices.md
    flock /tmp/edgecnn-cpu.lock python benchmarks/devices.py --run runs/quickstart   # reuse a finished run

1. Runs `edgecnn compress recipes/quickstart.yaml` once (or copies the finished run given with
   --run), then `edgecnn deploy RUN --device D` for
   D in local-cpu and rpi-emu (and local-gpu when torch sees a GPU; otherwise its reason is recorded).
   rpi-emu accuracies are real ARM64 execution; its latencies are emulated (qemu-user).
2. Latency stability: the same model (student-pruned, TFLite int8, 1 thread) measured by the agent
   in five separate processes; the coefficient of variation of the five p50s (target <= 3%).
Every number comes from the agent (edgecnn/runtime/agent.py) in this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgecnn.analysis.report import HEADER, markdown_table, model_rows
from edgecnn.core.environment import environment
from edgecnn.devices.deploy import deploy
from edgecnn.devices.profiles import get_profile, reachability
from edgecnn.runtime.agent import WARMUP_SECONDS
from edgecnn.runtime.host import run_agent_local

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "quickstart.yaml"
DEVICES = ("local-cpu", "local-gpu", "rpi-emu")
REPEATS = 5
CV_TARGET = 0.03
FIELDS = (
    "name",
    "format",
    "precision",
    "device",
    "emulated",
    "size_bytes",
    "accuracy",
    "val_accuracy",
    "eval_samples",
    "metrics",
    "latency_ms",
    "peak_memory_mb",
    "runtime",
    "threads",
    "machine",
)


def stability(model: Path, npz: Path, repeats: int = REPEATS, min_seconds: float = 2.0) -> dict:
    """p50 latency of one model in `repeats` fresh agent processes, and their coefficient of variation."""
    runs = [run_agent_local(model, npz, threads=1, min_seconds=min_seconds, min_iters=200) for _ in range(repeats)]
    p50 = [r["latency_ms"]["p50"] for r in runs]
    cv = statistics.stdev(p50) / statistics.mean(p50)
    return {
        "model": str(model.relative_to(npz.parents[1])),
        "runtime": runs[0]["runtime"],
        "threads": 1,
        "min_seconds_per_run": min_seconds,
        "method": (
            f"{repeats} fresh agent processes, each: warm-up >= {WARMUP_SECONDS} s, then >= 200 runs and "
            f">= {min_seconds} s of batch-1 inference with the GC paused, pinned to one CPU"
        ),
        "pinned_cpu": [r.get("pinned_cpu") for r in runs],
        "iters": [r["latency_ms"]["iters"] for r in runs],
        "p50_ms": p50,
        "p50_mean_ms": statistics.mean(p50),
        "cv": cv,
        "cv_target": CV_TARGET,
        "meets_target": cv <= CV_TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished quickstart run to copy instead of running compress")
    args = ap.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "quickstart"
        if args.run:
            shutil.copytree(args.run, run)
        else:
            subprocess.run([sys.executable, "-m", "edgecnn", "compress", str(RECIPE), "--out", str(run)], check=True)
        devices = {}
        for name in DEVICES:
            reason = reachability(get_profile(name))
            if reason:
                devices[name] = {"available": False, "reason": reason}
                print(f"{name}: unavailable ({reason})", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            entries = deploy(run, name, log=lambda msg: print(msg, file=sys.stderr))
            devices[name] = {"available": True, "wall_s": round(time.perf_counter() - t0, 1), "models": len(entries)}
        report = json.loads((run / "report.json").read_text())
        stable = stability(run / "quantize" / "model.int8.tflite", run / "bench" / "eval.npz")
    deployed = [m for m in report["models"] if m["device"] in devices]
    result = {
        "benchmark": "devices",
        "command": "edgecnn compress recipes/quickstart.yaml; edgecnn deploy RUN --device D",
        "wall_s": round(time.perf_counter() - t_start, 1),
        "environment": environment(),
        "recipe_overrides": [],
        "decision_split": report.get("decision_split"),
        "figures_split": "test",
        "devices": devices,
        "deployments": report.get("deployments", {}),
        "models": [{k: m.get(k) for k in FIELDS} for m in deployed],
        "latency_stability": stable,
    }
    (HERE / "devices.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "devices.md").write_text(markdown_table(HEADER, model_rows(deployed)) + "\n")
    print(json.dumps({"devices": devices, "cv": stable["cv"], "p50_ms": stable["p50_ms"]}, indent=2))


if __name__ == "__main__":
    main()
