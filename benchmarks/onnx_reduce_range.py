"""ONNX Runtime int8 on x86 without VNNI: u8s8 with and without reduce_range, against fp32.

The shared ResNet-56 (../shared/models) exported to ONNX and quantized by edgecnn's own
`quantize_onnx` (QDQ, per-channel, MinMax on 512 training images drawn evenly across classes) with
uint8 activations and 7-bit (reduce_range) or 8-bit weights, and with int8 activations. Every file is
measured by the benchmark agent: accuracy on --test-images CIFAR-10 test images drawn evenly from
all classes, then batch-1 p50 at one thread (pinned) in --rounds alternating rounds
(benchmarks/timing.py), side by side in one run. No choice is made from the figures (reduce_range
`auto` follows the CPU's flags). Writes benchmarks/onnx_reduce_range.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
from timing import alternating_rounds

from edgecnn.compression.export import export_onnx
from edgecnn.compression.quantize import quantize_onnx, x86_without_vnni
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.runtime.host import run_agent_local, write_eval_npz

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "models"
CIFAR = "imagefolder:~/.cache/edgecnn/cifar10"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-images", type=int, default=3000, help="CIFAR-10 test images, drawn evenly")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds (best p50 kept)")
    ap.add_argument("--seconds", type=float, default=2.0, help="latency measuring time per file and round")
    a = ap.parse_args()
    if not (SHARED / "resnet56_cifar10.state_dict.pt").exists():
        sys.exit(f"{SHARED}: the shared ResNet-56 is needed")
    spec = importlib.util.spec_from_file_location("cifar_resnet", SHARED / "cifar_resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.CifarResNet(depth=56, width=16, num_classes=10)
    model.load_state_dict(torch.load(SHARED / "resnet56_cifar10.state_dict.pt", weights_only=True))
    model.eval()
    meta = json.loads((SHARED / "resnet56_cifar10.json").read_text())
    data = load_data(CIFAR)
    data.mean, data.std = meta["mean"], meta["std"]
    test = data.test.head(a.test_images)
    calib = data.normalize(data.calibration(512).x).numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        npz, small = Path(tmp) / "test.npz", Path(tmp) / "latency.npz"
        write_eval_npz(data, test, npz)
        write_eval_npz(data, test.head(16), small)
        files = {"fp32": Path(tmp) / "fp32.onnx"}
        export_onnx(model, (3, 32, 32), files["fp32"])
        for label, activation, rr in (("u8s8", "uint8", "false"), ("u8s8-reduce-range", "uint8", "true"),
                                      ("s8s8", "int8", "false")):
            files[label] = Path(tmp) / f"{label}.onnx"
            quantize_onnx(files["fp32"], files[label], calib, activation=activation, reduce_range=rr)
        for label, path in files.items():
            m = run_agent_local(path, npz, threads=1, min_iters=1, min_seconds=0)
            rows[label] = {"accuracy": m["accuracy"], "eval_samples": m["eval_samples"], "runtime": m["runtime"]}
        timed = alternating_rounds(files, small, [1], a.rounds, a.seconds)
    for label, r in rows.items():
        r["p50_rounds_ms"] = timed[label]["1"]
        r["p50_ms"] = min(r["p50_rounds_ms"])
    for r in rows.values():
        r["accuracy_minus_fp32_points"] = round(100 * (r["accuracy"] - rows["fp32"]["accuracy"]), 2)
        r["p50_over_fp32"] = round(r["p50_ms"] / rows["fp32"]["p50_ms"], 3)
    result = {
        "benchmark": "onnx_reduce_range",
        "command": f"python benchmarks/onnx_reduce_range.py --test-images {a.test_images} --rounds {a.rounds} "
                   f"--seconds {a.seconds}",
        "decision_split": None,  # no choice is made from these figures
        "figures_split": "test",
        "environment": environment(),
        "x86_without_vnni": x86_without_vnni(),
        "eval_images": len(test),
        "calibration_images": len(calib),
        "rows": rows,
    }
    (HERE / "onnx_reduce_range.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
