"""Keypoints end to end on mnist-keypoints: does distillation help a heatmap pose model, and what do pruning and
int8 cost?

    python benchmarks/keypoints.py              # the keypoints quickstart's settings; writes benchmarks/keypoints.json
    python benchmarks/keypoints.py --tiny       # a check that the script runs (1 epoch, few images): no JSON kept

Two runs of `recipes/keypoints_quickstart.yaml` through `edgecnn.compress`, on the same data split:
1. the full recipe: the pose_small teacher trained on labels, pose_mobile distilled from its
   heatmaps (alpha 0.5: half toward the teacher's, half the label heatmaps), pruned (30% of
   channels, the heatmap conv kept whole), exported to ONNX and TFLite and quantized to int8
   (calibrated on training images);
2. the same pose_mobile, same seed and schedule, trained on labels alone for as many epochs as
   the distillation ran (the teacher is run 1's, loaded from its file, not retrained).
Every model is scored by OKS AP@[.5:.95] / AP50 / AP75 (pycocotools) and PCK@0.1 / PCK@0.2, from
the keypoints the benchmark agent decoded, on the test canvases, and timed at batch 1 on one
thread: the model, and end to end (normalisation, model and numpy heatmap decoding). Choices
(int8 candidate, export gates, deployed file) are made on the validation split (`decision_split`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgecnn.api import compress
from edgecnn.core.environment import environment

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "keypoints_quickstart.yaml"
TINY = {"train.epochs": 1, "distill.epochs": 1, "prune.epochs": 1, "data.eval_samples": 40, "data.calib_samples": 16,
        "bench.min_seconds": 0.05, "bench.min_iters": 5, "bench.warmup": 1}
METRICS = ("oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20")


def rows(report: dict, label: dict[str, str]) -> list[dict]:
    """The benchmark's rows of a run's report: one per model, named by `label` (report name -> row name)."""
    out = []
    for m in report["models"]:
        if m["name"] not in label:
            continue
        out.append({
            "model": label[m["name"]], "format": m["format"], "precision": m["precision"],
            **{k: m["metrics"][k] for k in METRICS},
            "p50_ms": m["latency_ms"]["p50"], "e2e_p50_ms": (m.get("e2e_latency_ms") or {}).get("p50"),
            "peak_memory_mb": m["peak_memory_mb"], "size_bytes": m["size_bytes"], "params": m["params"],
            "macs": m["macs"], "runtime": m["runtime"], "parity": m.get("parity"),
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a quick check that the script runs (results not kept)")
    ap.add_argument("--out", type=Path, default=HERE / "keypoints.json")
    args = ap.parse_args()
    overrides = dict(TINY) if args.tiny else {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = compress(RECIPE, out=Path(tmp) / "distilled", overrides=overrides)
        wall = time.perf_counter() - t0
        recipe = full.report["recipe"]
        labels_only = {**overrides, "teacher.model": str(Path(tmp) / "distilled" / "teacher" / "model.pt"),
                       "distill": None, "prune": None, "quantize": None, "export": None,
                       **{f"train.{k}": recipe["distill"][k] for k in ("epochs", "lr", "batch_size", "optimizer",
                                                                         "weight_decay")}}
        plain = compress(RECIPE, out=Path(tmp) / "labels-only", overrides=labels_only)
        table = rows(full.report, {"teacher": "teacher", "student": "student (distilled)",
                                   "student-pruned": "student pruned"})
        table += rows(plain.report, {"student": "student (labels only)"})
    by = {(r["model"], r["format"], r["precision"]): r for r in table}
    distilled = by[("student (distilled)", "pytorch", "fp32")]
    plain_row = by[("student (labels only)", "pytorch", "fp32")]
    result = {
        "benchmark": "keypoints",
        "command": "python benchmarks/keypoints.py" + (" --tiny" if args.tiny else ""),
        "recipe": recipe,
        "environment": environment(),
        "decision_split": full.report.get("decision_split"),
        "compress_wall_s": round(wall, 1),
        "stage_wall_s": {k: v.get("wall_s") for k, v in full.report["stages"].items()},
        "eval_images": full.report["models"][0]["eval_samples"],
        "checks": {
            "distilled_minus_labels_only_oks_ap": distilled["oks_ap"] - plain_row["oks_ap"],
            "distilled_minus_labels_only_pck20": distilled["pck20"] - plain_row["pck20"],
            "distilled_beats_labels_only": distilled["oks_ap"] > plain_row["oks_ap"],
            "equal_epochs": recipe["distill"]["epochs"],
            "compress_under_300s": wall < 300,
        },
        "models": table,
    }
    if not args.tiny:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"compress_wall_s": result["compress_wall_s"], "decision_split": result["decision_split"],
                      **result["checks"]}, indent=2))
    for r in table:
        print(f"{r['model']:<22} {r['format']:<8} {r['precision']:<5} OKS-AP {r['oks_ap']:.4f} "
              f"PCK@0.2 {r['pck20']:.4f} p50 {r['p50_ms']:.3f} ms e2e {r['e2e_p50_ms'] or float('nan'):.3f} ms")


if __name__ == "__main__":
    main()
