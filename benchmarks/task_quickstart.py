"""The shared body of detect.py and keypoints.py: a task's quickstart recipe, distilled against labels-only.

Two runs of the recipe through `edgecnn.compress`, on the same data split:
1. the full recipe (teacher trained on labels, student distilled from it, pruned, exported and
   quantized to int8 calibrated on training images);
2. the same student, seed and schedule, trained on labels alone for as many epochs as the
   distillation ran (the teacher is run 1's, loaded from its file, not retrained);
3. with --seeds N, both students again at the next N - 1 seeds (same teacher, data and schedule):
   the claim "distillation beats labels-only" compares their means, on validation and on test;
4. with --variant KEY=VALUE (repeatable), one more distilled student per variant and seed with that
   override (e.g. distill.peak_weight=0: the plain-MSE loss the default is chosen against, on validation).
Every model is scored on the test split from what the benchmark agent decoded, and timed at
batch 1 on one thread: the model, and end to end (normalisation, model and numpy decoding). The
two students are also scored on the validation split, where a recipe's choices are made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgecnn.api import compress
from edgecnn.compression.train import predict
from edgecnn.config.recipe import Recipe
from edgecnn.core.environment import environment
from edgecnn.models.files import load_model_file
from edgecnn.pipeline.context import Context

HERE = Path(__file__).resolve().parent
TINY = {"train.epochs": 1, "distill.epochs": 1, "prune.epochs": 1, "data.eval_samples": 40, "data.calib_samples": 16,
        "bench.min_seconds": 0.05, "bench.min_iters": 5, "bench.warmup": 1}
STUDENT_KEYS = ("epochs", "lr", "batch_size", "optimizer", "weight_decay")


def rows(report: dict, label: dict[str, str], metrics: tuple[str, ...]) -> list[dict]:
    """The benchmark's rows of a run's report: one per model, named by `label` (report name -> row name)."""
    out = []
    for m in report["models"]:
        if m["name"] not in label:
            continue
        out.append({
            "model": label[m["name"]], "format": m["format"], "precision": m["precision"],
            **{k: m["metrics"][k] for k in metrics},
            "p50_ms": m["latency_ms"]["p50"], "e2e_p50_ms": (m.get("e2e_latency_ms") or {}).get("p50"),
            "peak_memory_mb": m["peak_memory_mb"], "size_bytes": m["size_bytes"], "params": m["params"],
            "macs": m["macs"], "runtime": m["runtime"], "parity": m.get("parity"),
        })
    return out


def val_scores(recipe: dict, run_dir: Path, model_files: dict[str, list[Path]]) -> dict[str, list[float]]:
    """The task score of each PyTorch model file on the recipe's validation split (data read once, as the run does)."""
    ctx = Context(Recipe.model_validate(recipe), run_dir)

    def score(path: Path) -> float:
        model, _ = load_model_file(path)
        raw = predict(model, ctx.data, ctx.data.val).numpy()
        return ctx.task.score(ctx.task.evaluate(raw, ctx.data.val.y, ctx.task.head_spec(model, ctx.data)))

    return {name: [score(p) for p in paths] for name, paths in model_files.items()}


def student_test_score(report: dict, primary: str) -> float:
    """The PyTorch student's test score in a run's report (what the benchmark agent decoded)."""
    return next(m["metrics"][primary] for m in report["models"] if m["name"] == "student" and m["format"] == "pytorch")


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def parse_variant(text: str) -> tuple[str, object]:
    """KEY=VALUE with a YAML value, as `--set` takes it."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected KEY=VALUE, e.g. distill.peak_weight=0")
    return key, yaml.safe_load(value)


def main(benchmark: str, recipe_file: Path, metrics: tuple[str, ...], doc: str, seeds: int = 1,
         variants: tuple[str, ...] = (), data: dict | None = None, options: str = "") -> None:
    """Run both recipes (students at `seeds` seeds, plus distilled `variants`), print the table and (unless --tiny)
    write the JSON. `data`: recipe overrides every run takes (another data set than the recipe's); `options`: the
    calling script's own command-line options, for the JSON's command."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a quick check that the script runs (results not kept)")
    ap.add_argument("--seeds", type=int, default=seeds, help="seeds of the two students (the first is the recipe's)")
    ap.add_argument("--variant", dest="variants", action="append", type=parse_variant, metavar="KEY=VALUE",
                    help=f"a distilled student with this override too, at every seed (default: {list(variants)})")
    ap.add_argument("--out", type=Path, default=HERE / f"{benchmark}.json")
    args = ap.parse_args()
    args.variants = args.variants if args.variants is not None else [parse_variant(v) for v in variants]
    overrides = {**(data or {}), **(TINY if args.tiny else {})}
    primary = metrics[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = compress(recipe_file, out=Path(tmp) / "distilled", overrides=overrides)
        wall = time.perf_counter() - t0
        recipe = full.report["recipe"]
        teacher = {"teacher.model": str(Path(tmp) / "distilled" / "teacher" / "model.pt"), "prune": None,
                   "quantize": None, "export": None}
        labels_only = {**overrides, **teacher, "distill": None,
                       **{f"train.{k}": recipe["distill"][k] for k in STUDENT_KEYS}}
        plain = compress(recipe_file, out=Path(tmp) / "labels-only", overrides=labels_only)
        table = rows(full.report, {"teacher": "teacher", "student": "student (distilled)",
                                   "student-pruned": "student pruned"}, metrics)
        table += rows(plain.report, {"student": "student (labels only)"}, metrics)
        runs = {"distilled": [Path(tmp) / "distilled"], "labels_only": [Path(tmp) / "labels-only"]}
        test = {"distilled": [student_test_score(full.report, primary)],
                "labels_only": [student_test_score(plain.report, primary)]}
        seed_list = [recipe["seed"] + i for i in range(args.seeds)]

        def add_student(kind: str, extra: dict, seed: int) -> None:
            """One more student of `kind` (the recipe with `extra`) at `seed`: its run folder and test score."""
            out = Path(tmp) / f"student-{sum(map(len, runs.values()))}-seed{seed}"
            run = compress(recipe_file, out=out, overrides={**overrides, **teacher, **extra, "seed": seed})
            runs.setdefault(kind, []).append(out)
            test.setdefault(kind, []).append(student_test_score(run.report, primary))

        for seed in seed_list[1:]:  # the same two students from other initialisations and batch orders
            add_student("distilled", {}, seed)
            add_student("labels_only", labels_only, seed)
        for key, value in args.variants:  # distilled students that differ from the recipe's in one key
            for seed in seed_list:
                add_student(f"distilled, {key}={value}", {key: value}, seed)
        val = val_scores(recipe, Path(tmp) / "distilled",
                         {kind: [d / "distill" / "model.pt" for d in ds] for kind, ds in runs.items()})
    by = {(r["model"], r["format"], r["precision"]): r for r in table}
    distilled = by[("student (distilled)", "pytorch", "fp32")]
    plain_row = by[("student (labels only)", "pytorch", "fp32")]
    students = {kind: {"seeds": seed_list, "val": mean_sd(val[kind]), "test": mean_sd(test[kind])} for kind in val}
    gap = {split: students["distilled"][split]["mean"] - students["labels_only"][split]["mean"]
           for split in ("val", "test")}
    given = [f"{k}={v}" for k, v in args.variants]
    # the recipe's distillation against each variant: the recipe's setting is the better one where val_gap > 0
    against = {kind: {f"{split}_gap": students["distilled"][split]["mean"] - students[kind][split]["mean"]
                      for split in ("val", "test")} for kind in students if kind.startswith("distilled, ")}
    result = {
        "benchmark": benchmark,
        "command": f"python benchmarks/{benchmark}.py" + options + (" --tiny" if args.tiny else "")
        + (f" --seeds {args.seeds}" if args.seeds != seeds else "")
        + ("".join(f" --variant {v}" for v in given) if given != list(variants) else ""),
        "recipe": recipe,
        "data_overrides": data,
        "environment": environment(),
        "decision_split": full.report.get("decision_split"),
        "compress_wall_s": round(wall, 1),
        "stage_wall_s": {k: v.get("wall_s") for k, v in full.report["stages"].items()},
        "eval_images": full.report["models"][0]["eval_samples"],
        "students": students,
        "recipe_distillation_minus_variant": against,
        "checks": {
            **{f"distilled_minus_labels_only_{k}": distilled[k] - plain_row[k] for k in metrics},
            **{f"distilled_minus_labels_only_mean_{split}": d for split, d in gap.items()},
            "distilled_beats_labels_only": gap["val"] > 0 and gap["test"] > 0,
            "equal_epochs": recipe["distill"]["epochs"],
            "compress_under_300s": wall < 300,
        },
        "models": table,
    }
    if not args.tiny:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"compress_wall_s": result["compress_wall_s"], "decision_split": result["decision_split"],
                      "students": students, **result["checks"]}, indent=2))
    for r in table:
        scores = " ".join(f"{k} {r[k]:.4f}" for k in metrics)
        print(f"{r['model']:<22} {r['format']:<8} {r['precision']:<5} {scores} "
              f"p50 {r['p50_ms']:.3f} ms e2e {r['e2e_p50_ms'] or float('nan'):.3f} ms")
