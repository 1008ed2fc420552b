"""Run the full quickstart as a user would and record its wall time and results.

    python benchmarks/quickstart.py            # writes benchmarks/quickstart.json and quickstart.md

The wall time covers the whole `edgecnn compress recipes/quickstart.yaml` process (imports,
training, exports, benchmarks). The Markdown table is the one pasted into the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgecnn.analysis.report import HEADER, markdown_table, model_rows
from edgecnn.core.environment import environment

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "quickstart.yaml"
FIELDS = ("name", "format", "precision", "size_bytes", "params", "macs", "accuracy", "val_accuracy", "eval_samples",
          "metrics", "latency_ms", "peak_memory_mb", "runtime", "parity")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgecnn", "compress", str(RECIPE), "--out", str(out)], check=True)
        wall = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
    models = report["models"]
    teacher = next(m for m in models if m["name"] == "teacher")
    tfl8 = next(m for m in models if m["format"] == "tflite" and m["precision"] == "int8")
    result = {
        "benchmark": "quickstart",
        "command": "edgecnn compress recipes/quickstart.yaml",
        "wall_s": round(wall, 1),
        "environment": environment(),
        "decision_split": report.get("decision_split"),
        "figures_split": "test",
        "deployments": report.get("deployments", {}),
        "stage_wall_s": {k: v.get("wall_s") for k, v in report["stages"].items()},
        "checks": {
            "wall_under_180s": wall < 180,
            "tflite_int8_size_over_teacher_fp32_weights": tfl8["size_bytes"] / (4 * teacher["params"]),
            "tflite_int8_accuracy_minus_teacher": tfl8["accuracy"] - teacher["accuracy"],
        },
        "models": [{k: m.get(k) for k in FIELDS} for m in models],
    }
    (HERE / "quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "quickstart.md").write_text(markdown_table(HEADER, model_rows(models)) + "\n")
    print(json.dumps({"wall_s": result["wall_s"], **result["checks"]}, indent=2))


if __name__ == "__main__":
    main()
