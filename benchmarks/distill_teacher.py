"""Distillation on this CPU with the teacher in PyTorch against the teacher in OpenVINO, side by side.

    flock /tmp/edgecnn-cpu.lock python benchmarks/distill_teacher.py   # writes benchmarks/distill_teacher.json

The headline chain's distillation as its recipe stood when this was measured (commit 4b39cd7 of
recipes/cifar10_chain.yaml): the shared ResNet-56 teacher (../shared/models) into a `cifar_resnet8`
student (width 16), batch 128, on the CIFAR-10 training
split (45,000 images after the 10% validation split), through edgecnn's training loop (`fit`)
with `distill.teacher_runtime: torch` and `openvino`. Each run trains a fresh student from the same
seed for --epochs; --rounds alternating rounds (the order flips every round), best images/s of
each runtime kept. The teacher's forward pass alone is timed on one training batch in both
runtimes (alternating rounds, best median), and the two teachers' logits are compared on 1,000
test images. The two students differ as much as any two runs whose arithmetic differs in the last
bits (SGD amplifies it); for scale, one more PyTorch-teacher run changes only the seed
(`seed_reference`).
The data comes from ../shared/data/cifar10-jpg.tar.gz unpacked once (see recipes/cifar10_chain.yaml).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from cifar10_kd import teacher_model
from runtimes import lscpu

from edgecnn.compression.teacher_runtime import OpenVINOTeacher
from edgecnn.compression.train import accuracy, fit, predict
from edgecnn.config.recipe import DistillConfig
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model

HERE = Path(__file__).resolve().parent
RUNTIMES = ("torch", "openvino")


def teacher_forward_ms(teacher, ov_teacher, x: torch.Tensor, rounds: int, batches: int = 8) -> dict:
    """The teacher's forward pass alone on one training batch: median ms per runtime, best of alternating rounds."""
    x = x.contiguous(memory_format=torch.channels_last)  # the training loop's layout
    teacher.to(memory_format=torch.channels_last)
    forward = {"torch": teacher, "openvino": ov_teacher}
    ms: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    with torch.no_grad():
        for rnd in range(rounds):
            for runtime in RUNTIMES if rnd % 2 == 0 else RUNTIMES[::-1]:
                forward[runtime](x)  # warm-up
                times = []
                for _ in range(batches):
                    t0 = time.perf_counter()
                    forward[runtime](x)
                    times.append(1000 * (time.perf_counter() - t0))
                ms[runtime].append(round(statistics.median(times), 1))
    teacher.to(memory_format=torch.contiguous_format)
    return {"batch": len(x), "rounds": ms, "best": {r: min(v) for r, v in ms.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="imagefolder:~/.cache/edgecnn/cifar10")
    ap.add_argument("--epochs", type=int, default=1, help="distillation epochs per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "distill_teacher.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    teacher, meta = teacher_model()
    data = load_data(a.data, 0.1, meta["mean"], meta["std"])
    x = data.normalize(data.test.x[:1000])
    ov_teacher = OpenVINOTeacher(teacher, x[:2], "fp32", torch.get_num_threads())
    with torch.no_grad():
        logit_diff = float((ov_teacher(x) - teacher(x)).abs().max())
    forward_ms = teacher_forward_ms(teacher, ov_teacher, data.normalize(data.train.x[:128]), a.rounds + 1)
    kd = DistillConfig(epochs=a.epochs, batch_size=128, lr=0.1, weight_decay=5e-4, temperature=4.0, alpha=0.9)

    def distill(runtime: str, seed: int, rnd: int) -> dict:
        torch.manual_seed(seed)
        student = build_model(ModelInfo("cifar_resnet8", {"width": 16}, 10, (3, 32, 32)))
        cfg = kd.model_copy(update={"teacher_runtime": runtime})
        res = fit(student, data, cfg, seed=seed, augment=True, teacher=teacher, kd=cfg, label=f"distill {runtime}")
        run = {"round": rnd, "seed": seed, "images_per_s": round(res.images_per_s, 1), "precision": res.precision,
               "teacher_runtime": res.teacher_runtime, "history": res.history,
               "test_accuracy": accuracy(predict(student, data, data.test), data.test.y)}
        print(f"round {rnd} {runtime} seed {seed}: {run['images_per_s']} images/s, test {run['test_accuracy']:.4f}",
              flush=True)
        return run

    runs: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
    for rnd in range(a.rounds):
        for runtime in RUNTIMES if rnd % 2 == 0 else RUNTIMES[::-1]:
            runs[runtime].append(distill(runtime, 0, rnd + 1))
    seed_reference = distill("torch", 1, 0)
    best = {r: max(x["images_per_s"] for x in v) for r, v in runs.items()}
    out = {
        "benchmark": "distill_teacher",
        "command": f"python benchmarks/distill_teacher.py --epochs {a.epochs} --rounds {a.rounds}",
        "wall_s": round(time.perf_counter() - t0, 1),
        "decision_split": None,  # no choice is made: both runtimes are reported
        "figures_split": "test",
        "settings": {"teacher": "shared ResNet-56", "student": "cifar_resnet8 (width 16)", "data": a.data,
                     "train_images": len(data.train), "test_images": len(data.test), "epochs": a.epochs,
                     "rounds": a.rounds, "batch_size": kd.batch_size, "threads": torch.get_num_threads()},
        "environment": environment(),
        "lscpu": lscpu(),
        "teacher_max_abs_logit_difference": logit_diff,
        "teacher_forward_ms": forward_ms,
        "teacher_forward_openvino_over_torch": round(forward_ms["best"]["torch"] / forward_ms["best"]["openvino"], 3),
        "runs": runs,
        "seed_reference": seed_reference,
        "images_per_s": best,
        "openvino_over_torch": round(best["openvino"] / best["torch"], 3),
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    keys = ("images_per_s", "openvino_over_torch", "teacher_forward_ms", "teacher_max_abs_logit_difference")
    print(json.dumps({k: out[k] for k in keys}))


if __name__ == "__main__":
    main()
