"""Quantize: int8 ONNX (onnxruntime static, from the fp32 export), int8 TFLite (litert-torch PT2E) and
int8 OpenVINO (NNCF, from the fp32 IR), plus OpenVINO bf16/fp16 inference where the CPU has it.

Calibration uses `data.calib_samples` real training images drawn evenly across classes (seeded,
Dataset.calibration), for every runtime (NNCF too). With `select: auto` several configs are tried
(ONNX: format, signed/unsigned activations, calibration method; NNCF: both presets); every
candidate is measured by the agent on the validation and test images and at batch 1 on the local
CPU (the runtime's fp32 file and the candidates that could win timed again in alternating rounds,
each keeping its best), and the fastest within `quantize.accuracy_budget` (top-1 loss against the
fp32 PyTorch source, on the validation split) is kept; test accuracies are reported, never used to
choose. When no post-training candidate meets the budget, quantization-aware training
(`quantize.qat`) fine-tunes the model and its int8 files join the candidates. Each runtime then
prefers int8 only if it beats that runtime's fp32 file (`deploy`, and a note when fp32 wins). A
budget still missed fails the stage (or warns, with on_fail: warn). The bench stage deploys,
across runtimes and precisions, the fastest file within the budget.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from edgecnn.analysis.selection import CONFIRM_ROUNDS, near_fastest
from edgecnn.compression.export import export_onnx
from edgecnn.compression.int8_select import (
    choose,
    describe,
    measure,
    onnx_candidates,
    openvino_candidates,
    retime,
    within_budget,
)
from edgecnn.compression.openvino_ir import (
    export_openvino,
    float_precisions,
    move_ir,
    reprecision,
)
from edgecnn.compression.qat import QatResult, train_qat
from edgecnn.compression.quantize import convert_pt2e_tflite, quantize_onnx
from edgecnn.config.recipe import Recipe, recipe_dict
from edgecnn.core.console import quiet_libraries
from edgecnn.core.progress import log
from edgecnn.data.datasets import Split
from edgecnn.pipeline.context import Context, Stage
from edgecnn.pipeline.stages.common import (
    DECISION_SPLIT,
    SUFFIX,
    decision_split,
    eval_split,
    load_stage_model,
    measurement_config,
    score_fields,
)
from edgecnn.pipeline.stages.export import gate
from edgecnn.pipeline.stages.mixed import MIXED_FORMATS, MixedPrecision
from edgecnn.pipeline.stages.naming import model_name
from edgecnn.runtime.agent import CPU_RUNTIMES
from edgecnn.runtime.host import parity, write_eval_npz, write_timing_npz
from edgecnn.runtime.int8_proof import proof_fields
from edgecnn.tasks.base import raw_outputs

SUFFIX_FORMAT = {v: k for k, v in SUFFIX.items()}


class QuantizeStage(Stage):
    name = "quantize"
    reads = ("teacher", "distill", "prune", "export")
    data_reads = ("augment", "eval_samples", "calib_samples")

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.quantize is not None and recipe.quantize.enabled and recipe.export is not None

    def config(self, recipe: Recipe) -> dict:
        r = recipe_dict(recipe)
        return {
            "quantize": r["quantize"],
            "formats": r["export"]["formats"],
            "bench": measurement_config(r["bench"]),
        }

    def run(self, ctx: Context, out: Path) -> dict:
        return QuantizeRun(ctx, out).run()


class QuantizeRun:
    """One run of the quantize stage; its state (reference logits, work folder, QAT model) lives here."""

    def __init__(self, ctx: Context, out: Path):
        self.ctx, self.out = ctx, out
        self._qat: QatResult | None = None

    def run(self) -> dict:
        ctx, out = self.ctx, self.out
        cfg = ctx.recipe.quantize
        source, _ = ctx.latest_model()
        model, _ = load_stage_model(ctx, source)
        val, test = decision_split(ctx), eval_split(ctx)
        self.splits, self.head = {DECISION_SPLIT: val, "test": test}, ctx.task.head_spec(model, ctx.data)
        ref = {k: raw_outputs(model, ctx.data, split) for k, split in self.splits.items()}
        self.ref_scores = score_fields(ctx, ref, self.splits, self.head)
        self.ref_val_acc, self.ref_acc = self.ref_scores["val_score"], self.ref_scores["score"]  # the task's scores
        self.ref_logits = ref["test"]
        self.ref_name = f"{model_name(ctx, source)}/pytorch"
        self.model = model
        self.mixed = MixedPrecision(self, val)  # an unknown quantize.fallback layer ends here, before any work
        files, candidates, notes, deploy = {}, {}, [], {}
        budget = cfg.accuracy_budget
        with tempfile.TemporaryDirectory(dir=out) as work:
            self.work = Path(work)
            self.npz = self.work / "eval.npz"  # the validation images, then the test images
            write_eval_npz(ctx.data, Split(torch.cat([val.x, test.x]), _cat_targets(val.y, test.y)), self.npz,
                           self.head, ctx.task.name)
            for fmt in ctx.recipe.export.formats:
                fp32 = self._scored(measure(ctx.stage_dir("export") / f"model.{SUFFIX[fmt]}", self.npz,
                                            ctx.recipe.bench, self.work / "logits.npy", ctx.task.decoder_file()))
                if fmt == "openvino" and not cfg.openvino.enabled:  # no NNCF int8: the fp32 IR stays
                    candidates[fmt], deploy[fmt] = [self._fp32_row(fmt, fp32)], "fp32"
                    continue
                cands = self._post_training(fmt)
                best = choose(cands, self.ref_val_acc, budget, "val_score")
                if best is None and fmt in MIXED_FORMATS:  # layers kept in float, before QAT
                    cands += self.mixed.fallback(fmt, cands, notes)
                    best = choose(cands, self.ref_val_acc, budget, "val_score")
                if cfg.qat.enabled == "true" or (best is None and cfg.qat.enabled == "auto"):
                    cands += self._qat_candidates(fmt, best)
                    best = choose(cands, self.ref_val_acc, budget, "val_score")
                if best is not None:  # the files that could win, timed again side by side (fp32 among them)
                    self._retime(fp32, cands)
                    best = choose(cands, self.ref_val_acc, budget, "val_score")
                if best is None:
                    best = max(cands, key=lambda c: c["val_score"])
                    gate(
                        False,
                        f"{fmt} int8 loses {100 * (self.ref_val_acc - best['val_score']):.2f} points "
                        f"of {ctx.task.score_metric} against "
                        f"fp32 PyTorch on the validation split even in its best config ({describe(best['config'])}"
                        f"{', after QAT' if best['qat'] else ''}); budget quantize.accuracy_budget="
                        f"{budget}; raise the budget or enable quantize.qat",
                        cfg.on_fail,
                    )
                files[fmt], candidates[fmt], note = self._keep(fmt, best, cands, fp32)
                deploy[fmt] = files[fmt]["deploy_precision"]
                if note:
                    notes.append(note)
                    log(f"[yellow]note:[/yellow] {note}")
            if "openvino" in ctx.recipe.export.formats:
                self._openvino_floats(files, candidates["openvino"], notes)
            sensitivity = self.mixed.summary(files)
        result = {"source": source, "decision_split": DECISION_SPLIT, "files": files, "candidates": candidates,
                  "deploy": deploy, "notes": notes}
        if sensitivity:
            result["sensitivity"] = sensitivity
        if self._qat is not None:
            result["qat"] = {"epochs": len(self._qat.history), "history": self._qat.history}
        return result

    def _quantize_onnx(self, src: Path, dst: Path, config: dict) -> None:
        """`config`'s int8 file of the fp32 ONNX `src`, its `float_layers` kept in float."""
        quantize_onnx(
            src,
            dst,
            self.calib().numpy(),
            fmt=config["format"],
            activation=config["activation"],
            weight=config["weight"],
            per_channel=config["per_channel"],
            method=config["method"],
            reduce_range=config.get("reduce_range", "auto"),
            nodes_to_exclude=self.mixed.onnx_nodes(src, config.get("float_layers", [])),
            calibration_cache=self.calibration_cache(src, config["method"]),
        )

    def calibration_cache(self, src: Path, method: str) -> Path:
        """Where the calibrated ranges of `src` by `method` are kept, so each is calibrated once."""
        return self.work / f"calibration.{src.stem}.{method}.json"

    def calib(self) -> torch.Tensor:
        """The calibration images: data.calib_samples training images, evenly across classes."""
        return self.ctx.data.normalize(self.ctx.data.calibration(self.ctx.recipe.data.calib_samples,
                                                                 self.ctx.recipe.seed).x)

    def _scored(self, m: dict) -> dict:
        """An agent result over validation + test images: the task's `val_score`, `score` and `metrics` (test;
        classification: `val_accuracy`, `accuracy` too) and the test split's raw outputs as `logits`."""
        n_val = len(self.splits[DECISION_SPLIT])
        raw = {DECISION_SPLIT: m["logits"][:n_val], "test": m["logits"][n_val:]}
        return {**m, **score_fields(self.ctx, raw, self.splits, self.head), "logits": raw["test"]}

    def _parity(self, c: dict) -> dict:
        """A measured file's parity with the PyTorch source on the test split (Task.parity)."""
        return parity(self.ctx.task, c["logits"], self.ref_logits, self.splits["test"], self.head, self.ref_name)

    def _scores(self, c: dict) -> dict:
        """A record's scores: the file's and fp32 PyTorch's, on the validation and test splits."""
        keys = ("val_score", "score", "metrics", "val_accuracy", "accuracy")
        return {**{k: c[k] for k in keys if k in c},
                **{f"reference_{k}": self.ref_scores[k] for k in keys[:2] + keys[3:] if k in self.ref_scores}}

    def _retime(self, fp32: dict, cands: list[dict]) -> None:
        """Time this runtime's fp32 file and its int8 candidates within budget that lie within CONTENDER_SPREAD of
        the fastest of them again, in alternating rounds on a one-image batch; each keeps its best p50."""
        budget = self.ctx.recipe.quantize.accuracy_budget
        ok = [fp32, *(c for c in cands if within_budget(self.ref_val_acc, c["val_score"], budget))]
        rivals = [ok[i] for i in near_fastest([c["p50_ms"] for c in ok])]
        if len(rivals) < 2:
            return
        timing = self.work / "timing.npz"
        if not timing.exists():
            write_timing_npz(self.npz, timing)
        log(f"  timing the {len(rivals)} files that could win again, {CONFIRM_ROUNDS} alternating rounds")
        retime(rivals, timing, self.ctx.recipe.bench, self.ctx.task.decoder_file())

    def _openvino_int8(self, src: Path, stem: str) -> list[dict]:
        """NNCF int8 IRs of the fp32 IR `src` (one per preset tried), each measured."""
        cfg = self.ctx.recipe.quantize
        out = []
        explicit = {"float_layers": self.mixed.explicit} if self.mixed.explicit and stem != "qat" else {}
        for i, config in enumerate(openvino_candidates(cfg.openvino, cfg.select)):
            config = {**config, **explicit}
            path = self.work / f"{stem}{i}.int8.xml"
            self.mixed.quantize_openvino(src, path, config)
            out.append(self._measured(path, config, stem == "qat"))
        return out

    def _openvino_floats(self, files: dict, table: list[dict], notes: list[str]) -> None:
        """bf16 / fp16 inference of the fp32 IR where this CPU has it: measured, gated by the budget, kept."""
        cfg = self.ctx.recipe.quantize
        wanted, skipped = float_precisions(cfg.openvino.inference_precisions)
        for note in skipped:
            notes.append(note)
            log(f"[yellow]note:[/yellow] {note}")
        for precision in wanted:
            name = f"model.{precision}.xml"
            reprecision(self.ctx.stage_dir("export") / "model.xml", self.out / name, precision)
            c = self._measured(self.out / name, {"inference_precision": precision}, False)
            ok = within_budget(self.ref_val_acc, c["val_score"], cfg.accuracy_budget)
            if not ok:
                notes.append(f"openvino {precision} loses {100 * (self.ref_val_acc - c['val_score']):.2f} points "
                             f"against fp32 PyTorch on the validation split, over quantize.accuracy_budget="
                             f"{cfg.accuracy_budget}: never deployed")
            files[f"openvino-{precision}"] = {
                "file": name, "format": "openvino", "precision": precision, "decision_split": DECISION_SPLIT,
                **self._scores(c),
                "parity": self._parity(c),
                "config": c["config"], "qat": False, "p50_ms": c["p50_ms"], "size_bytes": c["size_bytes"],
                "inference_precision": c["inference_precision"], "within_budget": ok,
            }
            table.append(self._row(c, chosen=False, precision=precision))

    def _measured(self, path: Path, config: dict, qat: bool) -> dict:
        m = self._scored(measure(path, self.npz, self.ctx.recipe.bench, self.work / "logits.npy",
                                 self.ctx.task.decoder_file()))
        kind = "" if "inference_precision" in config else " int8"
        if kind:
            m.update(proof_fields(path))
        log(f"  {path.suffix[1:]}{kind} {describe(config)}{' QAT' if qat else ''}: "
            f"val {self.ctx.task.score_metric} {m['val_score']:.4f}, p50 {m['p50_ms']:.3f} ms")
        return {"config": config, "qat": qat, "path": path, **m}

    def _post_training(self, fmt: str) -> list[dict]:
        """Post-training int8 candidates of one format, each measured."""
        cfg, ctx = self.ctx.recipe.quantize, self.ctx
        out = []
        if fmt == "openvino":
            return self._openvino_int8(ctx.stage_dir("export") / "model.xml", "ptq")
        explicit = {"float_layers": self.mixed.explicit} if self.mixed.explicit else {}
        if fmt == "onnx":
            for i, config in enumerate(onnx_candidates(cfg.onnx, cfg.select)):
                config = {**config, **explicit}
                path = self.work / f"cand{i}.int8.onnx"
                self._quantize_onnx(ctx.stage_dir("export") / "model.onnx", path, config)
                out.append(self._measured(path, config, False))
        else:
            out.append(self.mixed.quantize(fmt, {**cfg.tflite.model_dump(), **explicit}, "ptq"))
        return out

    def _qat_model(self) -> QatResult:
        """Fine-tune once under fake int8 quantization (distilling from the teacher when there is one)."""
        if self._qat is None:
            ctx, cfg = self.ctx, self.ctx.recipe.quantize
            teacher = load_stage_model(ctx, "teacher")[0] if "distill" in ctx.results else None
            kd = ctx.recipe.distill
            log(f"quantize: quantization-aware training, {cfg.qat.epochs} epoch(s)")
            self._qat = train_qat(
                self.model, ctx.data, cfg.qat, seed=ctx.recipe.seed, augment=ctx.augment,
                per_channel=cfg.tflite.per_channel, teacher=teacher,
                temperature=kd.temperature if kd else 4.0, alpha=kd.alpha if kd else 0.7,
                task=ctx.task, head=self.head,
            )
        return self._qat

    def _qat_candidates(self, fmt: str, best: dict | None) -> list[dict]:
        """The QAT model's int8 file of one format (ONNX: the best post-training config on its weights)."""
        qat = self._qat_model()
        ctx = self.ctx
        if fmt == "openvino":
            fp32 = self.work / "qat.fp32.xml"
            export_openvino(qat.finetuned, ctx.data.input_shape, fp32, ctx.recipe.export.opset,
                            ctx.recipe.export.simplify)
            return self._openvino_int8(fp32, "qat")
        if fmt == "tflite":
            config = ctx.recipe.quantize.tflite.model_dump()
            path = self.work / "qat.int8.tflite"
            with quiet_libraries():
                convert_pt2e_tflite(qat.prepared, qat.quantizer, ctx.data.input_shape, path, config["io"])
            return [self._measured(path, config, True)]
        config = (best or {}).get("config") or onnx_candidates(ctx.recipe.quantize.onnx, "fixed")[0]
        fp32 = self.work / "qat.fp32.onnx"
        export_onnx(qat.finetuned, ctx.data.input_shape, fp32, ctx.recipe.export.opset, ctx.recipe.export.simplify)
        path = self.work / "qat.int8.onnx"
        self._quantize_onnx(fp32, path, config)
        return [self._measured(path, config, True)]

    def _row(self, c: dict, chosen: bool, precision: str = "int8") -> dict:
        """One measured candidate in the stage's table."""
        return {
            "config": c["config"],
            "label": describe(c["config"]),
            "runtime": CPU_RUNTIMES[SUFFIX_FORMAT[c["path"].suffix[1:]]],
            "precision": precision,
            "qat": c["qat"],
            **{k: c[k] for k in ("val_score", "score", "val_accuracy", "accuracy") if k in c},
            "p50_ms": c["p50_ms"],
            "latency_rounds_p50_ms": c.get("latency_rounds_p50_ms", [c["p50_ms"]]),
            "size_bytes": c["size_bytes"],
            "integer_mac_share": c.get("integer_mac_share"),
            "float_layers": c["config"].get("float_layers", []),
            "within_budget": within_budget(self.ref_val_acc, c["val_score"],
                                           self.ctx.recipe.quantize.accuracy_budget),
            "chosen": chosen,
        }

    @staticmethod
    def _fp32_row(fmt: str, fp32: dict) -> dict:
        return {"config": "fp32", "label": "fp32 export", "runtime": CPU_RUNTIMES[fmt], "precision": "fp32",
                "qat": False, **{k: fp32[k] for k in ("val_score", "score", "val_accuracy", "accuracy") if k in fp32},
                "p50_ms": fp32["p50_ms"], "latency_rounds_p50_ms": fp32.get("latency_rounds_p50_ms", [fp32["p50_ms"]]),
                "size_bytes": fp32["size_bytes"], "within_budget": True, "chosen": False}

    def _keep(self, fmt: str, best: dict, cands: list[dict], fp32: dict) -> tuple[dict, list[dict], str | None]:
        """Move the chosen file into place; its record, the candidate table and a note when fp32 wins."""
        name = f"model.int8.{SUFFIX[fmt]}"
        if fmt == "openvino":
            move_ir(best["path"], self.out / name)
        else:
            best["path"].replace(self.out / name)
        faster = best["p50_ms"] < fp32["p50_ms"]
        use_int8 = faster or self.ctx.recipe.quantize.select == "fixed"
        note = None
        if not faster:
            note = (
                f"{CPU_RUNTIMES[fmt]}: no int8 model is faster than fp32 on {self.ctx.recipe.bench.device} "
                f"(best int8 p50 {best['p50_ms']:.3f} ms, fp32 {fp32['p50_ms']:.3f} ms, batch 1, "
                f"{fp32['threads']} thread(s)); "
                + ("deploying fp32" if not use_int8 else "int8 kept because quantize.select is fixed")
            )
        table = [self._fp32_row(fmt, fp32)] + [self._row(c, chosen=c is best) for c in cands]
        record = {
            "file": name,
            "decision_split": DECISION_SPLIT,
            **self._scores(best),
            "parity": self._parity(best),
            "config": best["config"],
            "qat": best["qat"],
            "p50_ms": best["p50_ms"],
            "size_bytes": best["size_bytes"],
            "fp32_p50_ms": fp32["p50_ms"],
            "deploy_precision": "int8" if use_int8 else "fp32",
            "float_layers": best["config"].get("float_layers", []),
            **{k: best[k] for k in ("integer_mac_share", "float_islands", "mostly_float")},
        }
        return record, table, note


def _cat_targets(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two splits' targets in one tensor: labels as they are, padded detection rows padded to the longer."""
    if a.dim() == 3 and a.shape[1] != b.shape[1]:
        m = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(t, (0, 0, 0, m - t.shape[1]), value=-1.0) for t in (a, b))
    return torch.cat([a, b])
