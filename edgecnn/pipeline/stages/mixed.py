"""The quantize stage's mixed precision: per-layer int8 sensitivity and the layers kept in float.

`quantize.fallback: auto`: when no post-training int8 file of a format meets the budget, the layers
are ranked by int8 sensitivity (compression/sensitivity.py, on up to SENSITIVITY_IMAGES validation
images drawn evenly) and the fewest
most sensitive ones are kept in float until a file meets it (compression/mixed.py); every file
tried is measured like any other candidate, before QAT is tried. An explicit list keeps those layers
in float in every post-training file. The sensitivity table and plot go to the stage folder
whenever full int8 misses the budget, or with `quantize.sensitivity: true`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.analysis.selection import within_budget
from edgecnn.analysis.sensitivity import write_sensitivity
from edgecnn.compression.export import export_onnx
from edgecnn.compression.int8_select import describe
from edgecnn.compression.mixed import (
    check_float_layers,
    expand,
    fewest_float_layers,
    onnx_layer_nodes,
    openvino_layer_nodes,
    quantizable_layers,
)
from edgecnn.compression.openvino_ir import quantize_openvino
from edgecnn.compression.quantize import quantize_tflite
from edgecnn.compression.sensitivity import onnx_sensitivity
from edgecnn.core.errors import UserError
from edgecnn.core.progress import log
from edgecnn.data.datasets import Split
from edgecnn.pipeline.stages.common import DECISION_SPLIT, SUFFIX

MIXED_FORMATS = ("onnx", "tflite", "openvino")
MOST_SENSITIVE = 5  # layers named in the stage summary and report.md
SENSITIVITY_IMAGES = 1000  # validation images each layer's int8 file is scored on (one ORT pass per layer)


class MixedPrecision:
    """Sensitivity and float fallback of one quantize run (`run` is the stage's QuantizeRun)."""

    def __init__(self, run: Any, val: Split):
        self.run, self.val = run, val.head(SENSITIVITY_IMAGES)
        self.cfg = run.ctx.recipe.quantize
        self._layers: list[dict] | None = None
        self._nodes: dict[Path, dict[str, list[str]]] = {}
        self.rows: list[dict] | None = None
        self.seconds: dict[str, float] = {}
        self.explicit: list[str] = []
        if isinstance(self.cfg.fallback, list):
            self.explicit = expand(check_float_layers(self.cfg.fallback, self.layers()), self.layers())

    def layers(self) -> list[dict]:
        """The model's quantizable layers (torch.export), once."""
        if self._layers is None:
            try:
                self._layers = quantizable_layers(self.run.model, self.run.ctx.data.input_shape)
            except Exception as e:  # noqa: BLE001 - e.g. a TorchScript model: no module names to keep in float
                raise UserError(f"quantize.fallback: the model's layers cannot be named ({e.__class__.__name__}: "
                                f"{str(e).splitlines()[0][:120]}); set quantize.fallback: none") from None
        return self._layers

    def onnx_nodes(self, src: Path, names: list[str]) -> list[str]:
        """The ONNX nodes (or, for an .xml, OpenVINO IR nodes) of `src` computing the layers `names`."""
        if not names:  # nothing kept in float: no layer map needed (nor a model torch.export can trace)
            return []
        return [n for name in names for n in self.node_map(src).get(name, [])]

    def node_map(self, src: Path) -> dict[str, list[str]]:
        """Layer name -> the nodes of the ONNX file or OpenVINO IR `src` computing it, once per file."""
        if src not in self._nodes:
            try:
                match = openvino_layer_nodes if src.suffix == ".xml" else onnx_layer_nodes
                self._nodes[src] = match(src, self.layers())
            except ValueError as e:
                raise UserError(f"quantize.fallback: cannot match {src.name}'s nodes to the model's layers ({e}); "
                                "set quantize.fallback: none") from None
        return self._nodes[src]

    def score(self, raw) -> float:
        """The task's decision score of the sensitivity images' raw outputs (top-1 accuracy, mAP, OKS-AP)."""
        task = self.run.ctx.task
        return task.score(task.evaluate(np.asarray(raw), self.val.y, self.run.head))

    def sensitivity(self) -> list[dict]:
        """Per-layer int8 sensitivity on the validation split, measured once (ONNX Runtime, the recipe's ONNX
        config)."""
        if self.rows is None:
            run, ctx = self.run, self.run.ctx
            start = time.perf_counter()
            src = ctx.stage_dir("export") / "model.onnx"
            if not src.exists():  # export.formats without onnx: a work copy to measure on
                src = run.work / "sensitivity.fp32.onnx"
                export_onnx(run.model, ctx.data.input_shape, src, ctx.recipe.export.opset, ctx.recipe.export.simplify)
            log(f"quantize: int8 sensitivity of {len(self._layer_names())} layers on the {DECISION_SPLIT} split")
            val_x = ctx.data.normalize(self.val.x).numpy()
            self.rows = onnx_sensitivity(src, self.node_map(src), self.layers(), run.calib().numpy(), val_x,
                                         self.score, self.cfg.onnx.model_dump(), run.work, ctx.recipe.bench.threads)
            self.seconds["sensitivity"] = time.perf_counter() - start
        return self.rows

    def _layer_names(self) -> list[str]:
        return list(dict.fromkeys(x["name"] for x in self.layers()))

    def fallback(self, fmt: str, ptq: list[dict], notes: list[str]) -> list[dict]:
        """When no post-training file of `fmt` meets the budget: the sensitivity table, then (auto) the files
        keeping layers in float. A model whose layers cannot be named or matched gets a note instead."""
        try:
            self.sensitivity()
            return self.candidates(fmt, ptq)
        except UserError as e:
            note = f"{fmt}: no per-layer sensitivity or float fallback ({str(e).removeprefix('quantize.fallback: ')})"
            notes.append(note)
            log(f"[yellow]note:[/yellow] {note}")
            return []

    def candidates(self, fmt: str, ptq: list[dict]) -> list[dict]:
        """`fallback: auto` for one format: files keeping the 1, 2, 4, ... most sensitive layers in float (then
        bisecting) until one meets the budget; every file tried, measured. Empty where there is no fallback."""
        if fmt not in MIXED_FORMATS or self.cfg.fallback != "auto":
            return []
        ranking = [r["layer"] for r in sorted(self.sensitivity(), key=lambda r: r["rank"])]
        base = {k: v for k, v in max(ptq, key=lambda c: c["val_score"])["config"].items() if k != "float_layers"}
        start = time.perf_counter()
        tried: list[dict] = []

        order = self._layer_names()

        def meets(names: list[str]) -> bool:
            names = sorted(names, key=order.index)
            c = self.quantize(fmt, {**base, "float_layers": names}, f"mixed{len(names)}")
            tried.append(c)
            return within_budget(self.run.ref_val_acc, c["val_score"], self.cfg.accuracy_budget)

        k = fewest_float_layers(ranking, meets)
        self.seconds[f"fallback_{fmt}"] = time.perf_counter() - start
        log(f"quantize: {fmt} " + (f"meets the budget with {k} layer(s) in float" if k else
                                   "misses the budget even with every layer in float"))
        return tried

    def quantize(self, fmt: str, config: dict, stem: str) -> dict:
        """One int8 file of `fmt` with `config` (its `float_layers` kept in float), measured."""
        run, ctx = self.run, self.run.ctx
        path = run.work / f"{stem}.int8.{SUFFIX[fmt]}"
        if fmt == "onnx":
            run._quantize_onnx(ctx.stage_dir("export") / "model.onnx", path, config)
        elif fmt == "openvino":
            self.quantize_openvino(ctx.stage_dir("export") / "model.xml", path, config)
        else:
            quantize_tflite(run.model, ctx.data.input_shape, run.calib(), path, per_channel=config["per_channel"],
                            io=config["io"], float_layers=config.get("float_layers", ()))
        return run._measured(path, config, False)

    def quantize_openvino(self, src: Path, dst: Path, config: dict) -> None:
        """NNCF int8 of the fp32 IR `src` with `config`, its `float_layers` in NNCF's ignored scope."""
        quantize_openvino(src, dst, self.run.calib().numpy(), preset=config["preset"],
                          subset_size=config["subset_size"], fast_bias_correction=config["fast_bias_correction"],
                          ignored=self.onnx_nodes(src, config.get("float_layers", [])))

    def summary(self, files: dict) -> dict | None:
        """The sensitivity table, JSON and plot written to the stage folder, and their summary (None when not
        measured)."""
        if self.rows is None and self.cfg.sensitivity:
            self.sensitivity()
        if self.rows is None:
            return None
        kept = {fmt: f["float_layers"] for fmt, f in files.items() if f.get("float_layers")}
        rows = [{**r, "kept_float": sorted(fmt for fmt, names in kept.items() if r["layer"] in names)}
                for r in self.rows]
        names = write_sensitivity(rows, self.run.out, self.run.ref_name)
        worst = sorted(rows, key=lambda r: r["rank"])[:MOST_SENSITIVE]
        return {
            **names,
            "decision_split": DECISION_SPLIT,
            "layers": len(rows),
            "images": len(self.val),
            "ranked_by": "output_sqnr_db",
            "measured_with": f"onnxruntime, {describe({**self.cfg.onnx.model_dump(), 'format': 'qdq'})}",
            "most_sensitive": [{k: r[k] for k in ("layer", "output_sqnr_db", "score_drop")} for r in worst],
            "kept_float": kept,
            "seconds": self.seconds,
        }
