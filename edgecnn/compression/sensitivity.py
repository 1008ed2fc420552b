"""Per-layer int8 sensitivity, measured with ONNX Runtime on validation images.

For each quantizable layer the fp32 ONNX file is quantized with only that layer in int8 (static
QDQ, the calibrated ranges computed once and reused), and the file's validation score and the SQNR
of its logits against fp32 (onnxruntime.quantization.qdq_loss_debug's measure) say how much int8
costs there. `activation_sqnr_db` is qdq_loss_debug's cross-model measure on the fully int8 file:
the SQNR of that layer's output against fp32's, errors of earlier layers included. Layers are ranked
by `output_sqnr_db`, lowest (most sensitive) first: a continuous measure, where a small validation
split's score moves in steps of one image.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecnn.compression.quantize import quantize_onnx
from edgecnn.core.console import quiet_libraries

FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")
SQNR_IMAGES = 32  # validation images whose every activation the cross-model SQNR compares


def onnx_logits(path: Path, x: np.ndarray, threads: int = 1, batch: int = 64) -> np.ndarray:
    """The logits of an ONNX file on images `x` (normalised, NCHW float32), on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(threads, 0)
    opts.log_severity_level = 3
    with quiet_libraries():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `other` against `reference`, in dB (ONNX Runtime's measure)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return float(compute_signal_to_quantization_noice_ratio(reference, other))


def onnx_sensitivity(
    fp32: Path,
    nodes: dict[str, list[str]],
    layers: list[dict],
    calib: np.ndarray,
    val_x: np.ndarray,
    score: Callable[[np.ndarray], float],
    config: dict,
    work: Path,
    threads: int = 1,
) -> list[dict]:
    """One row per layer (execution order): name, ONNX nodes, op, the score lost and the output SQNR
    when only that layer is int8, the full-int8 activation SQNR, and its `rank` (1 = most sensitive).

    `nodes` maps layer names to ONNX node names (compression/mixed.py onnx_layer_nodes), `score`
    turns validation logits into the decision score, `config` is an ONNX int8 config (int8_select).
    """
    qdq = {k: config[k] for k in ("activation", "weight", "per_channel", "method")}
    qdq["reduce_range"] = config.get("reduce_range", "auto")
    cache = work / f"calibration.{config['method']}.json"
    ref = onnx_logits(fp32, val_x, threads)
    ref_score = score(ref)
    full = work / "sensitivity.full.onnx"
    quantize_onnx(fp32, full, calib, fmt="qdq", calibration_cache=cache, **qdq)
    activation = _activation_sqnr(fp32, full, val_x[:SQNR_IMAGES], work)
    ops = {x["name"]: x["op"] for x in layers}
    rows = []
    for name, names in nodes.items():
        only = work / "sensitivity.layer.onnx"
        quantize_onnx(fp32, only, calib, fmt="qdq", calibration_cache=cache, nodes_to_quantize=names, **qdq)
        logits = onnx_logits(only, val_x, threads)
        out = [activation.get(n) for n in names]
        rows.append({
            "layer": name, "onnx_nodes": names, "op": ops.get(name),
            "score_drop": ref_score - score(logits), "output_sqnr_db": sqnr_db(ref, logits),
            "activation_sqnr_db": min(out) if None not in out else None,
        })
    for i, row in enumerate(sorted(rows, key=lambda r: r["output_sqnr_db"])):
        row["rank"] = i + 1
    return rows


def _activation_sqnr(fp32: Path, qdq: Path, x: np.ndarray, work: Path) -> dict[str, float]:
    """ONNX node name -> SQNR (dB) of its output in the int8 file against the fp32 file (qdq_loss_debug)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.items = iter([{name: x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    graph = onnx.load(str(fp32), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    name = graph.input[0].name
    with quiet_libraries(), tempfile.TemporaryDirectory(dir=work) as tmp:
        a_fp32, a_qdq = Path(tmp) / "fp32.aug.onnx", Path(tmp) / "qdq.aug.onnx"
        modify_model_output_intermediate_tensors(str(fp32), str(a_fp32))
        modify_model_output_intermediate_tensors(str(qdq), str(a_qdq))
        matched = create_activation_matching(collect_activations(str(a_qdq), Reader(name)),
                                             collect_activations(str(a_fp32), Reader(name)))
    errors = {t: e["xmodel_err"] for t, e in compute_activation_error(matched).items() if "xmodel_err" in e}
    out = {}
    for n in graph.node:
        t = n.output[0] if n.output else None
        while t is not None and t not in errors:  # ONNX Runtime fuses Conv+Relu: the layer's int8 output follows
            nxt = consumers.get(t, [])
            t = nxt[0].output[0] if len(nxt) == 1 and nxt[0].op_type in FUSED_ACTIVATIONS else None
        if t is not None:
            out[n.name] = errors[t]
    return out
