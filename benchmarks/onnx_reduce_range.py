"""ONNX Runtime int8 on x86 without VNNI: u8s8 with and without reduce_range, against fp32.

The shared ResNet-56 (../shared/models) exported to ONNX and quantized by edgecnn's own
`quantize_onnx` (QDQ, per-channel, MinMax on 512 real training images) with uint8 activations and
7-bit (reduce_range) or 8-bit weights, and with int8 activations; accuracy on 3,000 CIFAR-10 test
images drawn evenly from all classes, batch-1 p50 at one thread, side by side in one run.
Writes benchmarks/onnx_reduce_range.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecnn.compression.export import export_onnx
from edgecnn.compression.quantize import quantize_onnx, x86_without_vnni
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "models"
CIFAR = "imagefolder:~/.cache/edgecnn/cifar10"


def evaluate(path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i : i + 250]})[0] for i in range(0, len(x), 250)])
    one = x[:1]
    for _ in range(50):
        sess.run(None, {name: one})
    times = []
    for _ in range(500):
        t0 = time.perf_counter()
        sess.run(None, {name: one})
        times.append(time.perf_counter() - t0)
    return {"accuracy": float((logits.argmax(1) == y).mean()), "p50_ms": 1e3 * float(np.median(times))}


def main() -> None:
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
    test = data.test.head(3000)
    x, y = data.normalize(test.x).numpy(), test.y.numpy()
    calib = data.normalize(data.calibration(512).x).numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, (3, 32, 32), fp32)
        rows["fp32"] = evaluate(fp32, x, y)
        for label, activation, rr in (("u8s8", "uint8", "false"), ("u8s8-reduce-range", "uint8", "true"),
                                      ("s8s8", "int8", "false")):
            q = Path(tmp) / f"{label}.onnx"
            quantize_onnx(fp32, q, calib, activation=activation, reduce_range=rr)
            rows[label] = evaluate(q, x, y)
            print(label, rows[label], flush=True)
    for r in rows.values():
        r["accuracy_minus_fp32_points"] = round(100 * (r["accuracy"] - rows["fp32"]["accuracy"]), 2)
        r["p50_over_fp32"] = round(r["p50_ms"] / rows["fp32"]["p50_ms"], 3)
    result = {
        "benchmark": "onnx_reduce_range",
        "command": "python benchmarks/onnx_reduce_range.py",
        "environment": environment(),
        "x86_without_vnni": x86_without_vnni(),
        "eval_images": len(y),
        "calibration_images": len(calib),
        "rows": rows,
    }
    (HERE / "onnx_reduce_range.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
