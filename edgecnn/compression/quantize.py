"""int8 quantizers: ONNX Runtime static quantization and litert-torch's PT2E quantizer for TFLite.

ONNX int8 uses `onnxruntime.quantization` static quantization fed by real calibration images;
TFLite int8 uses litert-torch's PT2E quantizer (per-channel weights; int8 or float input and output).
A failing conversion raises UserError naming the operator and, where known, the layer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecnn.compression.export import conversion_error, for_export
from edgecnn.core.artifacts import atomic_path
from edgecnn.core.console import quiet_libraries
from edgecnn.core.environment import cpu_flags, is_x86


def tflite_quantizer(per_channel: bool = True, qat: bool = False, float_layers: Sequence[str] = ()):
    """litert-torch's PT2E quantizer: symmetric int8, per-channel weights, static activations.

    The modules named in `float_layers` (and everything inside them) stay in float.
    """
    from litert_torch.quantize import pt2e_quantizer

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat,
                                                               is_dynamic=False)
    if not float_layers:
        return pt2e_quantizer.PT2EQuantizer().set_global(config)
    return _partial_quantizer(pt2e_quantizer.PT2EQuantizer, set(float_layers)).set_global(config)


def _partial_quantizer(base: type, skip: set[str]):
    """A PT2E quantizer annotating only nodes outside the modules in `skip`.

    litert-torch's own `set_module_name(name, None)` reads module names out of the nn_module_stack keys
    with a prefix torch.export no longer writes (`L__self___`), so it matches nothing; this filter reads
    the module paths (the stack's values) instead.
    """

    class PartialQuantizer(base):
        def _annotate_for_static_quantization_config(self, model):
            self._annotate_all_static_patterns(model, self.global_config, lambda n: not _in_modules(n, skip))
            return model

    return PartialQuantizer()


def _in_modules(node, modules: set[str]) -> bool:
    """True when an FX node was traced inside one of `modules` (module paths)."""
    return any(path in modules for path, _ in (node.meta.get("nn_module_stack") or {}).values())


def float_inputs(prepared: nn.Module, float_layers: Sequence[str]) -> None:
    """Feed each layer of `float_layers` a float input, in place: the value before the int8 observer.

    The TFLite converter quantizes a float convolution whose input and output are both quantized
    (weights included), so a layer only stays float when its input is float. Ops between the observer
    and the layer that only pass the quantized value on (max-pooling, reshapes) are copied onto the
    float value; a layer fed by anything else (an add of two branches) keeps its input as it is. The
    converter decides the rest: a producer whose int8 output fed only that layer runs in float too, so
    the file's own float islands (runtime/int8_proof.py) say what runs in float.
    """
    skip, graph = set(float_layers), prepared.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not _in_modules(node, skip) or not node.args:
            continue
        chain, src = [], node.args[0]
        while getattr(src, "op", None) == "call_function" and not _in_modules(src, skip) and \
                sum(isinstance(a, torch.fx.Node) for a in src.args) == 1 and isinstance(src.args[0], torch.fx.Node):
            chain.append(src)
            src = src.args[0]
        if getattr(src, "op", None) != "call_module" or not str(src.target).startswith("activation_post_process"):
            continue
        value = src.args[0]
        for op in reversed(chain):
            with graph.inserting_before(node):
                value = graph.call_function(op.target, (value, *op.args[1:]), dict(op.kwargs))
            value.meta = {k: v for k, v in op.meta.items() if k != "quantization_annotation"}
        node.replace_input_with(node.args[0], value)
    prepared.recompile()


def convert_pt2e_tflite(prepared: nn.Module, quantizer, input_shape: tuple[int, ...], path: Path, io: str) -> None:
    """Convert a calibrated (or QAT-trained) PT2E graph to a full-integer .tflite with `io` tensors."""
    with quiet_libraries():  # importing litert_torch or torchao logs a torch deprecation warning
        import litert_torch
        from litert_torch.quantize import quant_config
        from torchao.quantization.pt2e import quantize_pt2e

    from edgecnn.runtime.tflite_io import compact_names, float_io

    example = (torch.zeros(1, *input_shape),)
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    with atomic_path(path) as tmp:
        edge.export(str(tmp))
        content = compact_names(tmp.read_bytes())
        tmp.write_bytes(float_io(content) if io == "float" else content)


def quantize_tflite(
    model: nn.Module,
    input_shape: tuple[int, ...],
    calib: torch.Tensor,
    path: Path,
    per_channel: bool = True,
    io: str = "int8",
    float_layers: Sequence[str] = (),
) -> None:
    """Full-integer int8 .tflite through litert-torch's PT2E quantizer, calibrated on `calib` (normalised).

    `io` is the type of the input and output tensors: int8 (litert-torch's own) or float; the modules
    in `float_layers` stay in float (a mixed-precision file).
    """
    example = (torch.zeros(1, *input_shape),)
    try:
        with quiet_libraries():
            from torchao.quantization.pt2e import quantize_pt2e  # its import logs a torch deprecation warning

            exported = torch.export.export(for_export(model), example).module()
            quantizer = tflite_quantizer(per_channel, float_layers=float_layers)
            prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
            if float_layers:
                float_inputs(prepared, float_layers)
            with torch.no_grad():
                for i in range(len(calib)):
                    prepared(calib[i : i + 1])
            convert_pt2e_tflite(prepared, quantizer, input_shape, path, io)
    except Exception as e:  # noqa: BLE001
        raise conversion_error("TFLite int8", e, model, input_shape) from None


class _CalibReader:
    """onnxruntime CalibrationDataReader over normalised calibration images, in batches of one size.

    The histogram calibrators (Entropy, Percentile) stack every batch's outputs, so a ragged last
    batch would break them: the images beyond the last whole batch are left out.
    """

    def __init__(self, calib: np.ndarray, input_name: str, batch: int = 32):
        batch = min(batch, len(calib)) or 1
        stop = len(calib) - len(calib) % batch
        self._batches = iter([{input_name: calib[i : i + batch]} for i in range(0, stop, batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # pragma: no cover - some ORT versions call it
        pass


def x86_without_vnni() -> bool:
    """True on an x86 CPU whose int8 dot products lack VNNI (u8s8 products can saturate there)."""
    return is_x86() and not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()


def resolve_reduce_range(setting: str, activation: str, weight: str) -> bool:
    """quantize.onnx.reduce_range: "true", "false", or "auto" (on only where u8s8 saturates)."""
    if setting == "auto":
        return activation == "uint8" and weight == "int8" and x86_without_vnni()
    return setting == "true"


def quantize_onnx(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    *,
    fmt: str = "qdq",
    activation: str = "uint8",
    weight: str = "int8",
    per_channel: bool = True,
    method: str = "minmax",
    reduce_range: str = "auto",
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] = (),
    calibration_cache: Path | None = None,
) -> None:
    """Static int8 ONNX (QDQ or QOperator) calibrated on real images with MinMax/Entropy/Percentile.

    `reduce_range` (7-bit weights): "auto" turns it on for uint8 activations with int8 weights on an
    x86 CPU without VNNI, where ONNX Runtime's u8s8 kernels saturate and lose accuracy.
    `nodes_to_exclude` stay in float; `nodes_to_quantize`, when given, are the only nodes quantized.
    `calibration_cache` (a JSON file, one per calibration method) keeps the calibrated ranges: a later
    call with the same file, model and method skips calibration.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with quiet_libraries(), atomic_path(dst) as tmp, tempfile.TemporaryDirectory(dir=dst.parent) as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            _CalibReader(calib.astype(np.float32), input_name),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=types[activation],
            weight_type=types[weight],
            calibrate_method=methods[method],
            reduce_range=resolve_reduce_range(reduce_range, activation, weight),
            nodes_to_exclude=list(nodes_to_exclude) or None,
            nodes_to_quantize=list(nodes_to_quantize) or None,
            calibration_cache_path=calibration_cache,
        )
        onnx.checker.check_model(str(tmp))
