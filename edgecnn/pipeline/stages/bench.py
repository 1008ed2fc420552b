"""Bench: the task's score, latency and memory of every model of the run, measured by the agent; the deployed file.

PyTorch models are traced to TorchScript for the agent; ONNX, TFLite and OpenVINO files run in their
own runtimes. Each model runs in its own process, so its peak memory is its own. A decoding
task's outputs (a detector's, a keypoint model's) are decoded by the agent with the task's numpy
decoder (timed end to end beside the model) and its predictions scored here (COCO mAP, OKS AP by
pycocotools). Of the exported
files (every runtime and precision), the one marked `deploy` is the fastest here whose decision
score (validation accuracy, export/quantize stages) is within quantize.accuracy_budget of fp32 PyTorch's
(analysis/selection.py); the stage's `deployment` lists every candidate and says why it won.

Each file is timed once, one after another; the files that could win (within budget and size, and
within CONTENDER_SPREAD of the fastest p50) are then timed again in CONFIRM_ROUNDS alternating rounds
on a one-image batch (analysis/selection.py); each keeps the latency of its best round
(`latency_rounds_p50_ms` lists every model's rounds: one for the rest).
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.analysis.selection import CONFIRM_ROUNDS, could_win, note_retimed, pick_deployment, time_again
from edgecnn.config.recipe import QuantizeConfig, Recipe, recipe_dict
from edgecnn.core.errors import StageFailed
from edgecnn.core.progress import log, progress_bar
from edgecnn.devices.profiles import check_local_device
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import decision_score, eval_split, load_stage_model, measurement_config
from edgecnn.pipeline.stages.naming import model_name
from edgecnn.runtime.agent import GPU_RUNTIMES, model_size
from edgecnn.runtime.host import (
    agent_scores,
    measured,
    run_agent_local,
    save_torchscript,
    write_eval_npz,
    write_timing_npz,
)
from edgecnn.runtime.int8_proof import proof_fields

GPU_PROVIDERS = ("cuda", "CUDAExecutionProvider", "TensorrtExecutionProvider")  # what the agent reports on a GPU


def candidates(ctx: Context) -> list[dict]:
    """Every model the run produced: PyTorch models of each stage, then exports and int8 files."""
    out = []
    for stage in ("teacher", "distill", "prune"):
        r = ctx.results.get(stage)
        if not r:
            continue
        deployed = Path(r["torchscript"]) if r.get("torchscript") else ctx.stage_dir(stage) / r["model_file"]
        out.append(
            {
                "name": model_name(ctx, stage),
                "format": "pytorch",
                "precision": "fp32",
                "stage": stage,
                "file": deployed,
                "params": r.get("params"),
                "macs": r.get("macs"),
                "parity": None,
                "source": stage,
            }
        )
    for stage, precision in (("export", "fp32"), ("quantize", "int8")):
        r = ctx.results.get(stage)
        if not r:
            continue
        src = ctx.results[r["source"]]
        for fmt, f in r["files"].items():
            file = ctx.stage_dir(stage) / f["file"]
            int8 = f.get("precision", precision) == "int8"
            out.append(
                {
                    "name": model_name(ctx, r["source"]),
                    "format": f.get("format", fmt),
                    "precision": f.get("precision", precision),
                    "stage": stage,
                    "file": file,
                    "params": src.get("params"),
                    "macs": src.get("macs"),
                    "parity": f["parity"],
                    "decision_score": decision_score(f),
                    "source": r["source"],
                    # what of the file runs in integer kernels, read from the file itself; the layers kept float
                    "int8": {**proof_fields(file), "float_layers": f.get("float_layers", [])} if int8 else {},
                }
            )
    return out


def reference_score(ctx: Context) -> float | None:
    """fp32 PyTorch's decision score (validation split) of the exported model: what the budget is measured against."""
    export = ctx.results.get("export") or {}
    if decision_score(export, "reference_") is not None:
        return decision_score(export, "reference_")
    files = (ctx.results.get("quantize") or {}).get("files", {}).values()  # a run exported before the field
    return next((decision_score(f, "reference_") for f in files if decision_score(f, "reference_") is not None), None)


def deploy_pick(ctx: Context, files: list[dict]) -> dict | None:
    """The deploy pick among measured exported files, with the recipe's accuracy budget and size limit."""
    budget = (ctx.recipe.quantize or QuantizeConfig()).accuracy_budget
    return pick_deployment(files, reference_score(ctx), budget, ctx.recipe.bench.device, ctx.recipe.bench.max_size_kb)


def deployment(ctx: Context, models: list[dict]) -> dict | None:
    """Mark the deployed file among the measured exports (see the module docstring); its summary."""
    files = [m for m in models if m["format"] != "pytorch"]
    pick = deploy_pick(ctx, files)
    for m in models:
        m["deploy"] = bool(pick and pick["chosen"]) and m in files and all(
            m[k] == pick["chosen"][k] for k in ("name", "format", "precision", "path")
        )
    note_retimed(pick, files)
    return pick


def agent_run(ctx: Context, c: dict, target: Path, npz: Path, predictions_out: Path | None = None) -> dict:
    """The agent's result for candidate `c` (as file `target`) on batch `npz`, with the recipe's bench settings."""
    cfg = ctx.recipe.bench
    return run_agent_local(
        target,
        npz,
        threads=cfg.threads,
        runtime=GPU_RUNTIMES[c["format"]] if cfg.device == "local-gpu" else "auto",
        warmup=cfg.warmup,
        min_iters=cfg.min_iters,
        min_seconds=cfg.min_seconds,
        decoder=ctx.task.decoder_file(),
        predictions_out=predictions_out,
    )


class BenchStage(Stage):
    name = "bench"
    reads = ("teacher", "distill", "prune", "export", "quantize")
    data_reads = ("eval_samples",)

    def config(self, recipe: Recipe) -> dict:
        bench = recipe_dict(recipe)["bench"]
        return bench if bench["max_size_kb"] is not None else measurement_config(bench)  # keys as before the limit

    def run(self, ctx: Context, out: Path) -> dict:
        cfg = ctx.recipe.bench
        check_local_device(cfg.device, "bench.device")
        todo = [c for c in candidates(ctx) if cfg.device != "local-gpu" or c["format"] in GPU_RUNTIMES]
        batches = self._batches(ctx, todo, out)
        models = []
        with progress_bar("bench", total=len(todo), unit="models") as bar:
            for c in todo:
                models.append(self._measure(ctx, c, batches[c["source"]], out))
                bar.advance(f"{c['name']} {c['format']} {c['precision']}")
        self._retime_contenders(ctx, todo, models, batches, out)
        return {"models": models, "deployment": deployment(ctx, models)}

    @staticmethod
    def _retime_contenders(ctx: Context, todo: list[dict], models: list[dict], batches: dict, out: Path) -> None:
        """Time the files that could win the pick again, side by side; each keeps its best round's latency."""
        files = [(c, m) for c, m in zip(todo, models, strict=True) if m["format"] != "pytorch"]
        rivals = could_win(deploy_pick(ctx, [m for _, m in files]), [m for _, m in files])
        if not rivals:
            return
        source = {id(m): c for c, m in files}
        timing: dict[Path, Path] = {}
        for m in rivals:
            npz = batches[source[id(m)]["source"]][0]
            if npz not in timing:
                timing[npz] = out / f"timing.{npz.stem}.npz"
                write_timing_npz(npz, timing[npz])
        log(f"[dim]bench: timing the {len(rivals)} files that could be deployed again, {CONFIRM_ROUNDS} alternating "
            "rounds[/dim]")

        def time_one(m: dict) -> dict:
            c = source[id(m)]
            return agent_run(ctx, c, c["file"], timing[batches[c["source"]][0]])["latency_ms"]

        time_again(rivals, time_one)
        for f in timing.values():
            f.unlink()

    @staticmethod
    def _batches(ctx: Context, todo: list[dict], out: Path) -> dict[str, tuple[Path, dict]]:
        """The evaluation batch (and head spec) of each source stage's models: `eval.npz` for the latest model's
        head (what deploy ships), `eval.<stage>.npz` for a model whose head differs (a detector of other strides)."""
        split, latest = eval_split(ctx), ctx.latest_model()[0]
        heads = {s: ctx.task.head_spec(load_stage_model(ctx, s)[0], ctx.data) for s in {c["source"] for c in todo}}
        heads.setdefault(latest, ctx.task.head_spec(load_stage_model(ctx, latest)[0], ctx.data))
        written: dict[str, Path] = {}
        out_map = {}
        for stage in [latest, *sorted(set(heads) - {latest})]:
            key = repr(heads[stage])
            if key not in written:
                written[key] = out / ("eval.npz" if not written else f"eval.{stage}.npz")
                write_eval_npz(ctx.data, split, written[key], heads[stage], ctx.task.name)
            out_map[stage] = (written[key], heads[stage])
        return out_map

    def _measure(self, ctx: Context, c: dict, batch: tuple[Path, dict], out: Path) -> dict:
        """Benchmark one candidate with the agent in its own process; a report.json model entry."""
        cfg = ctx.recipe.bench
        npz, head = batch
        decoder = ctx.task.decoder_file()
        preds = out / "predictions.npz" if decoder else None
        target = c["file"]
        if c["format"] == "pytorch":
            model, _ = load_stage_model(ctx, c["stage"])
            target = out / f"{c['stage']}.ts"
            save_torchscript(model, ctx.data.input_shape, target)
        m = agent_run(ctx, c, target, npz, predictions_out=preds)
        scores = agent_scores(ctx.task, preds, eval_split(ctx), head) if preds else None
        if preds:
            preds.unlink()
        if cfg.device == "local-gpu" and not any(p in GPU_PROVIDERS for p in (m.get("providers") or [])[:1]):
            raise StageFailed(
                f"{target.name}: the agent ran on {(m.get('providers') or ['an unknown provider'])[0]}, not a GPU; "
                "refusing to report CPU numbers as local-gpu numbers"
            )
        return {
            "name": c["name"],
            "format": c["format"],
            "precision": c["precision"],
            "path": str(c["file"].relative_to(ctx.run_dir))
            if c["file"].is_relative_to(ctx.run_dir)
            else str(c["file"]),
            "size_bytes": model_size(str(c["file"])),
            "params": c["params"],
            "macs": c["macs"],
            **measured(m, scores),
            "latency_rounds_p50_ms": [m["latency_ms"]["p50"]],
            "device": cfg.device,
            "parity": c["parity"],
            "decision_score": c.get("decision_score"),
            "deploy": False,
            "emulated": False,
            **c.get("int8", {}),
        }
