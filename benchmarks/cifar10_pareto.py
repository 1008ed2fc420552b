"""The CIFAR-10 sweep (recipes/cifar10_sweep.yaml) end to end, its Pareto fronts and the README plot.

    flock /tmp/edgecnn-cpu.lock .venv/bin/python benchmarks/cifar10_pareto.py
    # writes benchmarks/cifar10_pareto.json and benchmarks/cifar10_pareto.png

Six variants of the user's ResNet-56 (../shared/models): pruned to 1.5x, 2x and 3x fewer MACs, each
fine-tuned for one epoch (distilling from the unpruned network) on a 5,000-image subset of the
CIFAR-10 training images (500 per class, linked from ~/.cache/edgecnn/cifar10; 10% of it held out
for validation), times ONNX int8 with per-channel and per-tensor weights. Accuracy is measured on
2,000 test images drawn evenly from all classes (fixed seed), latency at batch 1 with one
thread, by `edgecnn compress` (process pool, 2 workers) and `edgecnn compare`.
Targets: >= 6 variants, the whole sweep <= 20 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgecnn.analysis.compare import plot_device
from edgecnn.core.environment import environment

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "cifar10_sweep.yaml"
CIFAR = Path("~/.cache/edgecnn/cifar10").expanduser()
TARGETS = {"min_variants": 6, "max_wall_s": 1200}


def subset(per_class: int) -> Path:
    """An ImageFolder of the first `per_class` training images per class (links) and every test image."""
    root = Path(f"~/.cache/edgecnn/cifar10-train{per_class}").expanduser()
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, limit in (("train", per_class), ("test", None)):
        for cls in sorted(d for d in (CIFAR / split).iterdir() if d.is_dir()):
            (root / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:limit]:
                (root / split / cls.name / f.name).symlink_to(f)
    (root / ".complete").touch()
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=500, help="training images per class for fine-tuning")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="keep the sweep here (default: a temporary folder)")
    args = ap.parse_args()
    if not (CIFAR / "train").is_dir():
        sys.exit(f"{CIFAR}: unpack ../shared/data/cifar10-jpg.tar.gz there first")
    data = subset(args.per_class)
    tmp = None if args.out else tempfile.mkdtemp(prefix="cifar10_pareto-")
    out = args.out or Path(tmp) / "sweep"
    cmd = [sys.executable, "-m", "edgecnn", "compress", str(RECIPE), "--out", str(out), "--workers",
           str(args.workers), "--set", f"data.spec=imagefolder:{data}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    sweep = json.loads((out / "sweep.json").read_text())
    comp = json.loads((out / "compare.json").read_text())
    plot_device(comp["rows"], "local-cpu", HERE / "cifar10_pareto.png")
    fits, splits = {}, set()
    for v in sweep["variants"]:
        rep = json.loads((out / v["path"] / "report.json").read_text())
        splits.add(str(rep.get("decision_split")))
        prune = rep["stages"].get("prune", {})
        fits[v["name"]] = {**{k: prune.get(k) for k in ("macs_reduction", "ratio", "accuracy", "wall_s")},
                           "epochs": [s.get("epochs") for s in prune.get("steps", [])]}
    result = {
        "what": "recipes/cifar10_sweep.yaml: ResNet-56 pruned at 3 MAC reductions x ONNX int8 per-channel/per-tensor",
        "command": " ".join(cmd[1:]).replace(str(out), "OUT"),
        "data": {"train_subset": f"{args.per_class} images per class ({10 * args.per_class} total, 10% held out "
                 "for validation)", "eval": comp["data"], "eval_sha256": comp["eval_sha256"]},
        "fine_tune": {"epochs": 1, "distill_from": "the unpruned ResNet-56", "per_variant": fits},
        "environment": environment(),
        "decision_split": "/".join(sorted(splits)),
        "figures_split": "test",
        "wall_s": round(wall, 1),
        "sweep": {k: sweep[k] for k in ("backend", "workers", "variants", "shared")},
        "rows": [{k: r[k] for k in ("run", "model", "format", "precision", "size_kb", "params", "macs", "accuracy",
                                    "p50_ms", "p90_ms", "peak_mb", "front")} for r in comp["rows"]],
        "targets": TARGETS,
    }
    result["checks"] = {"variants": len(sweep["variants"]), "variants_ok": len(sweep["variants"]) >= 6,
                        "wall_ok": wall <= TARGETS["max_wall_s"]}
    (HERE / "cifar10_pareto.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"wall_s": result["wall_s"], **result["checks"]}, indent=2))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
