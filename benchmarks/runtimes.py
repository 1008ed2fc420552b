"""Every runtime and precision edgecnn deploys, side by side on this machine: three CIFAR-10 CNNs.

    flock /tmp/edgecnn-cpu.lock python benchmarks/runtimes.py   # writes benchmarks/runtimes.json

Models: the user's ResNet-56 (../shared/models, trained: its accuracy is measured), a ResNet-20
(zoo `cifar_resnet20`, width 16) and `mobilenetv2_cifar` (width 0.5), both with random weights
(torch.manual_seed(0)): their latency is what counts, their accuracy means nothing and is not
reported. Each model becomes the files the pipeline makes: ONNX fp32 (dynamo, simplified) and
int8 (onnxruntime static QDQ, uint8 activations, per-channel int8 weights, MinMax), TFLite fp32
and int8 (litert-torch PT2E, per-channel, int8 I/O), OpenVINO fp32 (IR converted from the ONNX
file), bf16 and fp16 inference of it where the CPU lists them in OPTIMIZATION_CAPABILITIES (skipped
with a note elsewhere), and NNCF int8. int8 files are calibrated on --calib training images drawn
evenly across classes. Every file is measured by the agent (edgecnn/runtime/agent.py, one process
per measurement): test accuracy once (ResNet-56 only, --test-per-class images of each class of the
CIFAR-10 test split), then batch-1 latency at one thread (pinned) and at all threads, in --rounds
alternating rounds (the file order and thread order flip every round); each file's p50 is the best
of its rounds. Images come from ../shared/data/cifar10-jpg.tar.gz (a subset is unpacked to a
temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from timing import alternating_rounds, best_p50

from edgecnn.analysis.report import markdown_table
from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.openvino_ir import (
    cpu_capabilities,
    export_openvino,
    float_precisions,
    quantize_openvino,
    reprecision,
)
from edgecnn.compression.quantize import quantize_onnx, quantize_tflite
from edgecnn.compression.train import accuracy, predict
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model, load_weights
from edgecnn.runtime.agent import model_size
from edgecnn.runtime.host import run_agent_local, write_eval_npz

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
             "amx_fp16", "asimd", "asimddp", "i8mm", "bf16", "fphp", "asimdhp")


def lscpu() -> dict:
    """The CPU as lscpu describes it: model name, cores, and every flag."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines()) if v}
    flags = fields.get("Flags", "").split()
    return {
        "model_name": fields.get("Model name"),
        "architecture": fields.get("Architecture"),
        "cpus": fields.get("CPU(s)"),
        "threads_per_core": fields.get("Thread(s) per core"),
        "flags": flags,
        "int8_bf16_fp16_flags": [f for f in CPU_FLAGS if f in flags],
        "openvino_capabilities": cpu_capabilities(),
    }


def unpack(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """The first images of each class of the shared archive's train and test splits, as an image folder."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4:
                continue
            split, cls = parts[1], parts[2]
            limit = train_per_class if split == "train" else test_per_class
            if counts.get((split, cls), 0) < limit:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                tar.extract(m, root, filter="data")
    return root / "cifar10"


def models() -> list[tuple[str, torch.nn.Module, str, bool]]:
    """(name, model, origin, trained) for the three CNNs."""
    info = ModelInfo(f"{SHARED / 'models' / 'cifar_resnet.py'}:CifarResNet", {"depth": 56, "width": 16,
                                                                                "num_classes": 10})
    r56 = build_model(info)
    load_weights(r56, SHARED / "models" / "resnet56_cifar10.state_dict.pt")
    torch.manual_seed(0)
    r20 = build_model(ModelInfo("cifar_resnet20", {"width": 16}, 10, (3, 32, 32), MEAN, STD))
    torch.manual_seed(0)
    mbv2 = build_model(ModelInfo("mobilenetv2_cifar", {"width_mult": 0.5}, 10, (3, 32, 32), MEAN, STD))
    return [
        ("resnet56", r56.eval(), "the user's ResNet-56 (../shared/models/resnet56_cifar10.state_dict.pt)", True),
        ("resnet20", r20.eval(), "zoo cifar_resnet20 (width 16), random weights (torch.manual_seed(0))", False),
        ("mobilenetv2", mbv2.eval(), "zoo mobilenetv2_cifar (width 0.5), random weights (torch.manual_seed(0))",
         False),
    ]


def make_files(name: str, model, data, calib_n: int, work: Path, notes: list[str]) -> dict[tuple[str, str], Path]:
    """Every deployable file of one model, keyed by (runtime, precision)."""
    shape = data.input_shape
    calib = data.normalize(data.calibration(calib_n).x)
    f = {("onnxruntime", "fp32"): work / f"{name}.onnx", ("onnxruntime", "int8"): work / f"{name}.int8.onnx",
         ("litert", "fp32"): work / f"{name}.tflite", ("litert", "int8"): work / f"{name}.int8.tflite",
         ("openvino", "fp32"): work / f"{name}.xml", ("openvino", "int8"): work / f"{name}.int8.xml"}
    export_onnx(model, shape, f["onnxruntime", "fp32"], simplify=True)
    quantize_onnx(f["onnxruntime", "fp32"], f["onnxruntime", "int8"], calib.numpy())
    export_tflite(model, shape, f["litert", "fp32"])
    quantize_tflite(model, shape, calib, f["litert", "int8"])
    export_openvino(model, shape, f["openvino", "fp32"], onnx_file=f["onnxruntime", "fp32"])
    quantize_openvino(f["openvino", "fp32"], f["openvino", "int8"], calib.numpy())
    wanted, skipped = float_precisions(["bf16", "fp16"])
    for p in wanted:
        f["openvino", p] = work / f"{name}.{p}.xml"
        reprecision(f["openvino", "fp32"], f["openvino", p], p)
    for n in skipped:
        if n not in notes:
            notes.append(n)
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds (best p50 kept)")
    ap.add_argument("--seconds", type=float, default=2.0, help="latency measuring time per file, round and setting")
    ap.add_argument("--test-per-class", type=int, default=1000, help="CIFAR-10 test images per class (max 1000)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (training split, even over classes)")
    ap.add_argument("--out", type=Path, default=HERE / "runtimes.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    all_threads = os.cpu_count() or 1
    settings = [1, all_threads] if all_threads > 1 else [1]
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = unpack(tmp / "data", max(1, -(-a.calib // 10)), a.test_per_class)
        data = load_data(f"imagefolder:{root}", 0.0, MEAN, STD)
        npz, small = tmp / "test.npz", tmp / "latency.npz"
        write_eval_npz(data, data.test, npz)
        test_images = len(data.test)
        write_eval_npz(data, data.test.head(16), small)
        files, results = {}, []
        for name, model, origin, trained in models():
            print(f"{name}: exporting and quantizing", flush=True)
            files[name] = make_files(name, model, data, a.calib, tmp, notes)
            torch_acc = accuracy(predict(model, data, data.test), data.test.y) if trained else None
            entry = {"name": name, "origin": origin, "trained": trained, "pytorch_fp32_accuracy": torch_acc,
                     "params": sum(p.numel() for p in model.parameters()), "files": {}}
            for (runtime, precision), path in files[name].items():
                m = run_agent_local(path, npz if trained else small, threads=all_threads, min_iters=1,
                                    min_seconds=0)
                entry["files"][f"{runtime} {precision}"] = {
                    "runtime": runtime, "precision": precision, "file": path.name, "size_bytes": model_size(str(path)),
                    "runtime_version": m["runtime"], "inference_precision": m["inference_precision"],
                    "accuracy": m["accuracy"] if trained else None, "eval_samples": m["eval_samples"] if trained else 0,
                    "p50_ms": {}, "rounds": {}}
            results.append(entry)
        timed = alternating_rounds({(e["name"], key): files[e["name"]][rec["runtime"], rec["precision"]]
                                    for e in results for key, rec in e["files"].items()},
                                   small, settings, a.rounds, a.seconds)
    rows, fastest = [], {}
    for e in results:
        for key, rec in e["files"].items():
            rec["rounds"] = timed[e["name"], key]
            rec["p50_ms"] = best_p50(rec["rounds"])
        base = e["files"]["onnxruntime fp32"]["p50_ms"]
        for rec in e["files"].values():
            rec["vs_onnxruntime_fp32"] = {t: round(rec["p50_ms"][t] / base[t], 3) for t in rec["p50_ms"]}
        fastest[e["name"]] = {t: min(e["files"], key=lambda k: e["files"][k]["p50_ms"][t]) for t in base}
        for key, rec in e["files"].items():
            rows.append([e["name"], key, rec["inference_precision"] or "-", f"{rec['size_bytes'] / 1024:.0f}",
                         "-" if rec["accuracy"] is None else f"{rec['accuracy']:.4f}",
                         *(f"{rec['p50_ms'][str(t)]:.3f} ({rec['vs_onnxruntime_fp32'][str(t)]:.2f}x)"
                           for t in settings)])
    header = ["model", "runtime precision", "ran as", "size KB", "accuracy",
              *(f"p50 ms {t} thread{'s' if t > 1 else ''} (vs ORT fp32)" for t in settings)]
    table = markdown_table(header, rows)
    command = (f"python benchmarks/runtimes.py --rounds {a.rounds} --seconds {a.seconds} "
               f"--test-per-class {a.test_per_class} --calib {a.calib}")
    out = {
        "benchmark": "runtimes", "command": command, "wall_s": round(time.perf_counter() - t0, 1),
        "decision_split": None, "figures_split": "test",  # no choice is made: every file is reported
        "settings": {"rounds": a.rounds, "seconds": a.seconds, "threads": settings, "batch": 1,
                     "test_images": test_images, "calib_images": a.calib},
        "environment": environment(),
        "lscpu": lscpu(), "notes": notes, "fastest_by_threads": fastest, "models": results, "table": table,
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
