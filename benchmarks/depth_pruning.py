"""Does a student cut from the teacher learn faster than the same network from random weights? Side by side.

    python benchmarks/depth_pruning.py [--keep-blocks 2] [--epochs 3] [--data imagefolder:~/.cache/edgecnn/cifar10]

writes benchmarks/depth_pruning.json. In one run, on the same data split:
1. the shared ResNet-56 teacher's removable blocks are ranked on validation images
   (`edgecnn.compression.depth.choose_blocks`, the loss the student trains on) and all but
   `--keep-blocks` removed: the student the chain recipe's `student.from_teacher` builds;
2. a copy of that student has every layer re-initialised (PyTorch's default initialisation): the
   same architecture from random weights;
3. both are distilled from the teacher with the same settings (the chain recipe's distill section,
   `--epochs` epochs, seed 0) and scored on the validation and all test images, with 95% Wilson
   intervals and a two-proportion p-value for the difference.
The data comes from ../shared/data/cifar10-jpg.tar.gz unpacked once (see that folder's README).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from cifar10_kd import teacher_model

from edgecnn.analysis.stats import ci_text, two_proportion_p, wilson_interval
from edgecnn.compression.depth import choose_blocks, cut_from_teacher
from edgecnn.compression.train import accuracy, fit, predict
from edgecnn.config.recipe import DistillConfig
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import count_macs_params
from edgecnn.tasks.registry import get_task

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "cifar10_chain.yaml"


def reinitialised(model: torch.nn.Module) -> torch.nn.Module:
    """The same modules with PyTorch's default initialisation (every layer's reset_parameters)."""
    import copy

    fresh = copy.deepcopy(model)
    torch.manual_seed(0)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return fresh.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-blocks", type=int, default=2)
    ap.add_argument("--max-params", type=int, help="student.from_teacher.max_params (default: the recipe's)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", default="imagefolder:~/.cache/edgecnn/cifar10")
    ap.add_argument("--out", type=Path, default=HERE / "depth_pruning.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    teacher, meta = teacher_model()
    data = load_data(a.data, 0.1, meta["mean"], meta["std"])
    task = get_task("classification")
    recipe = yaml.safe_load(RECIPE.read_text())
    kd = DistillConfig(**{**recipe["distill"], "epochs": a.epochs})
    samples = recipe["student"]["from_teacher"].get("samples", 1000)
    max_params = a.max_params or recipe["student"]["from_teacher"].get("max_params")
    t_choice = time.perf_counter()
    choice = choose_blocks(teacher, data, data.val.head(samples), task, task.head_spec(teacher, data), a.keep_blocks,
                           kd=kd, max_params=max_params)
    choice_s = time.perf_counter() - t_choice
    cut = cut_from_teacher(teacher, choice)
    students = {"cut from the teacher": cut, "same network, random weights": reinitialised(cut)}
    macs, params = count_macs_params(cut, data.input_shape)
    rows = {}
    for name, student in students.items():
        res = fit(student, data, kd, seed=0, augment=True, teacher=teacher, kd=kd, label=name)
        val = accuracy(predict(student, data, data.val), data.val.y)
        test = accuracy(predict(student, data, data.test), data.test.y)
        rows[name] = {"val_accuracy": val, "test_accuracy": test, "test_images": len(data.test),
                      "test_ci95": wilson_interval(test, len(data.test)), "train_s": round(sum(
                          h["epoch_s"] for h in res.history), 1), "history": res.history,
                      "teacher_runtime": res.teacher_runtime}
        print(f"{name}: val {val:.4f}, test {test:.4f} {ci_text(wilson_interval(test, len(data.test)))}", flush=True)
    cut_row, fresh_row = rows["cut from the teacher"], rows["same network, random weights"]
    teacher_test = accuracy(predict(teacher, data, data.test), data.test.y)
    out = {
        "benchmark": "depth_pruning",
        "command": f"python benchmarks/depth_pruning.py --keep-blocks {a.keep_blocks} --epochs {a.epochs}"
                   + (f" --max-params {a.max_params}" if a.max_params else ""),
        "wall_s": round(time.perf_counter() - t0, 1),
        "decision_split": "val", "figures_split": "test",
        "environment": environment(),
        "settings": {"distill": kd.model_dump(mode="json"), "seed": 0, "train_images": len(data.train)},
        "teacher_test_accuracy": teacher_test,
        "student": {"params": params, "macs": macs, "choice_s": round(choice_s, 1), **choice.to_dict()},
        "results": rows,
        "test_gain_points": 100 * (cut_row["test_accuracy"] - fresh_row["test_accuracy"]),
        "test_gain_p_value": two_proportion_p(cut_row["test_accuracy"], len(data.test), fresh_row["test_accuracy"],
                                              len(data.test)),
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("test_gain_points", "test_gain_p_value")}, indent=2))


if __name__ == "__main__":
    main()
