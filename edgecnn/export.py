"""Export PyTorch models to ONNX (dynamo exporter) and TFLite (litert-torch), fp32 and int8.

ONNX int8 uses `onnxruntime.quantization` static quantization fed by real calibration images;
TFLite int8 uses litert-torch's PT2E quantizer (per-channel weights, int8 input and output).
A failing conversion raises UserError naming the operator and, where known, the layer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecnn.artifacts import atomic_path
from edgecnn.errors import UserError


@contextlib.contextmanager
def quiet():
    """Silence the converters' chatter on stdout/stderr (fd level) unless EDGECNN_VERBOSE is set."""
    if os.environ.get("EDGECNN_VERBOSE"):
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    levels = {n: logging.getLogger(n).level for n in ("torch", "absl", "litert_torch", "onnxscript")}
    try:
        for n in levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def _conversion_error(kind: str, exc: Exception, model: nn.Module) -> UserError:
    text = f"{exc.__class__.__name__}: {exc}"
    op = re.search(r"(aten[.:]{1,2}[A-Za-z0-9_.]+|torch\.ops\.[A-Za-z0-9_.]+|'[A-Za-z]+' (?:op|operator))", text)
    layer = re.search(r"(?:module|layer|nn_module_stack)[^A-Za-z0-9_]+([A-Za-z_][A-Za-z0-9_.]*)", text)
    what = f"operator {op.group(1)}" if op else text.splitlines()[0][:200]
    where = f" in layer {layer.group(1)}" if layer else ""
    return UserError(
        f"{kind} export failed: unsupported {what}{where}; replace that layer or skip {kind} in export.formats"
    )


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 18) -> None:
    """One self-contained .onnx file (dynamic batch), checked by onnx.checker."""
    import onnx

    model = model.eval()
    example = (torch.randn(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with quiet(), atomic_path(path) as tmp:
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(tmp), external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - converter failures are the model's, reported as such
        raise _conversion_error("ONNX", e, model) from None


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """A float32 .tflite file (batch 1) converted by litert-torch."""
    import litert_torch

    model = model.eval()
    try:
        with quiet(), atomic_path(path) as tmp:
            litert_torch.convert(model, (torch.zeros(1, *input_shape),)).export(str(tmp))
    except Exception as e:  # noqa: BLE001
        raise _conversion_error("TFLite", e, model) from None


def quantize_tflite(
    model: nn.Module, input_shape: tuple[int, ...], calib: torch.Tensor, path: Path, per_channel: bool = True
) -> None:
    """Full-integer int8 .tflite through litert-torch's PT2E quantizer, calibrated on `calib` (normalised)."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    example = (torch.zeros(1, *input_shape),)
    try:
        with quiet(), atomic_path(path) as tmp:
            exported = torch.export.export(model.eval(), example).module()
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
            )
            prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for i in range(len(calib)):
                    prepared(calib[i : i + 1])
            converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            edge = litert_torch.convert(
                converted, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
            )
            edge.export(str(tmp))
    except Exception as e:  # noqa: BLE001
        raise _conversion_error("TFLite int8", e, model) from None


class _CalibReader:
    """onnxruntime CalibrationDataReader over normalised calibration images."""

    def __init__(self, calib: np.ndarray, input_name: str, batch: int = 32):
        self._batches = iter([{input_name: calib[i : i + batch]} for i in range(0, len(calib), batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # pragma: no cover - some ORT versions call it
        pass


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
) -> None:
    """Static int8 ONNX (QDQ or QOperator) calibrated on real images with MinMax/Entropy/Percentile."""
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
    with quiet(), atomic_path(dst) as tmp, tempfile.TemporaryDirectory(dir=dst.parent) as work:
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
        )
        onnx.checker.check_model(str(tmp))
