"""Is the chain's student short of training or of capacity? Its fit to the teacher on training and test images.

    python benchmarks/student_fit.py --run ~/.cache/edgecnn/bench/cifar10_chain [--run DIR ...] [--train-images 20000]

writes benchmarks/student_fit.json. For each run of `benchmarks/cifar10_chain.py` (its run directory,
finished or past distillation), the teacher, the distilled student and the pruned student (the run's own
model files, those written so far) are scored side by side, without augmentation, on `--train-images`
training images (a fixed sample), on all validation images (where settings are compared) and on all test
images: top-1 accuracy, top-1 agreement with the teacher, and the soft-target loss the student trained on
(T^2 x KL(teacher || student) at the recipe's temperature). A student that fits the training images better
with more epochs but scores the same on held-out images is short of capacity (or of generalisation), not of
training time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from runtimes import lscpu

from edgecnn.analysis.stats import wilson_interval
from edgecnn.compression.train import accuracy, predict
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import load_model_file
from edgecnn.tasks.classification import kd_loss

HERE = Path(__file__).resolve().parent
STAGES = {"teacher": "teacher/model.pt", "student": "distill/model.pt", "student-pruned": "prune/model.pt"}


def run_recipe(run: Path, finished: bool) -> dict:
    """The run's recipe: its report's, or (a run still pruning) the data and distill settings its distill stage used."""
    if finished:
        return json.loads((run / "report.json").read_text())["recipe"]
    key = json.loads((run / "distill" / "manifest.json").read_text())["key"]
    return {"data": key["data"], "distill": key["config"]["distill"], "prune": {}}


def fit_of_run(run: Path, train_images: int) -> dict:
    """Each finished stage model's accuracy, teacher agreement and soft loss on training, validation and test images."""
    finished = (run / "report.json").is_file()
    recipe = run_recipe(run, finished)
    d = recipe["data"]
    data = load_data(d["spec"], d["val_fraction"], d["mean"], d["std"])
    splits = {"train": data.train.head(train_images), "val": data.val, "test": data.test}
    logits = {}
    for name, rel in STAGES.items():
        if not (run / rel).is_file():  # a run in progress: the stages finished so far
            continue
        model, _ = load_model_file(run / rel)
        with torch.no_grad():
            logits[name] = {s: predict(model, data, split) for s, split in splits.items()}
    rows = {}
    for name, out in logits.items():
        row = {}
        for s, split in splits.items():
            acc = accuracy(out[s], split.y)
            teacher = logits["teacher"][s]
            row[s] = {"images": len(split.y), "accuracy": acc, "accuracy_ci95": wilson_interval(acc, len(split.y)),
                      "agreement_with_teacher": accuracy(out[s], teacher.argmax(1)),
                      "soft_loss": float(kd_loss(out[s], teacher, split.y, recipe["distill"]["temperature"], 1.0))}
        rows[name] = row
    return {"run": run.name, "finished": finished,
            "distill_epochs": recipe["distill"]["epochs"], "distill_lr": recipe["distill"]["lr"],
            "prune_params_budget": recipe["prune"].get("params_budget"), "models": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, action="append", required=True,
                    help="a cifar10_chain.py run (finished, or past distillation)")
    ap.add_argument("--train-images", type=int, default=20000, help="training images scored (a fixed sample)")
    ap.add_argument("--out", type=Path, default=HERE / "student_fit.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    runs = [fit_of_run(r.expanduser(), a.train_images) for r in a.run]
    out = {
        "benchmark": "student_fit",
        "command": "python benchmarks/student_fit.py " + " ".join(f"--run {r}" for r in a.run)
                   + f" --train-images {a.train_images}",
        "wall_s": round(time.perf_counter() - t0, 1),
        "decision_split": "val",
        "figures_split": "train (a fixed sample, no augmentation) and test",
        "environment": environment(),
        "lscpu": lscpu(),
        "runs": runs,
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in runs:
        for name, row in r["models"].items():
            cells = [f"{s} {v['accuracy']:.4f} (agree {v['agreement_with_teacher']:.4f}, soft {v['soft_loss']:.3f})"
                     for s, v in row.items()]
            print(f"{r['run']} {name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
