"""OpenVINO IR files: converted from the ONNX export, int8 through NNCF post-training quantization.

An IR is two files with one stem, `model.xml` (the graph) and `model.bin` (the weights); they are
written, deployed and counted (`size_bytes`) together. IRs have a static batch of 1, like the
.tflite files. The inference precision a float file asks for (f32, bf16, f16: OpenVINO's
INFERENCE_PRECISION_HINT) is stored in its rt_info under `edgecnn/inference_precision`; the agent
reads it, compiles the model with it and reports the precision OpenVINO actually ran (a CPU
without bf16 runs a bf16 file in f32, or, with AVX-512, in emulated bf16, slower than f32: so
bf16 candidates are made only where the CPU lists BF16). An fp16 file also stores its weights in
fp16. An int8 file asks for none: its unquantized layers run at the device's default (bf16 on AMX
CPUs, as NNCF + OpenVINO users get it).

Telemetry: openvino and nncf send usage events to Google Analytics unless opted out; edgecnn
never sends anything, so `import_openvino` blocks the `openvino_telemetry` module before the first
import (both libraries then use their built-in no-op stand-ins).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn as nn

from edgecnn.core.console import quiet_libraries
from edgecnn.core.errors import UserError

# report precision -> OpenVINO inference precision hint
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# report precision -> the OPTIMIZATION_CAPABILITIES entry a CPU lists when it runs that precision natively
CAPABILITIES = {"bf16": "BF16", "fp16": "FP16"}
RT_INFO_KEY = ["edgecnn", "inference_precision"]
PRESETS = ("performance", "mixed")


def import_openvino():
    """`openvino`, imported with its telemetry blocked (see the module docstring)."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import now raises ImportError
    import openvino

    return openvino


def import_nncf():
    """`nncf`, imported with its telemetry blocked."""
    import_openvino()
    import nncf

    return nncf


def first_line(e: Exception, limit: int = 200) -> str:
    """The first line of an OpenVINO / NNCF error (its class name where the message is empty), cut at `limit`."""
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0][:limit]


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this machine's CPU (e.g. FP32, BF16, FP16, INT8)."""
    ov = import_openvino()
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def float_precisions(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The reduced float precisions of `wanted` this CPU runs natively, and a note for each it does not."""
    caps = cpu_capabilities()
    ok, notes = [], []
    for p in wanted:
        if CAPABILITIES[p] in caps:
            ok.append(p)
        else:
            notes.append(
                f"openvino: {p} inference skipped: this CPU does not list {CAPABILITIES[p]} in OpenVINO's "
                f"OPTIMIZATION_CAPABILITIES ({', '.join(caps)}); {p} needs e.g. "
                + ("AMX or AVX-512 BF16 (Intel Xeon)" if p == "bf16" else "AVX-512 FP16 / AMX-FP16 or an ARM CPU")
            )
    return ok, notes


def ir_files(xml: Path) -> list[Path]:
    """The files of one IR: the .xml and the .bin beside it."""
    xml = Path(xml)
    return [xml, xml.with_suffix(".bin")]


def move_ir(src: Path, dst: Path) -> None:
    """Move both files of an IR (the .bin first, so a present .xml always has its weights)."""
    for s, d in reversed(list(zip(ir_files(src), ir_files(dst), strict=True))):
        os.replace(s, d)


def _save(model, xml: Path, precision: str | None) -> None:
    """Save an ov.Model as `xml` + `.bin`, asking for `precision` at inference (None: OpenVINO's default)."""
    ov = import_openvino()
    if precision is not None:
        model.set_rt_info(HINTS[precision], RT_INFO_KEY)
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".ir.tmp-") as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
        move_ir(staged, xml)


def onnx_to_openvino(onnx_file: Path, xml: Path, input_shape: tuple[int, ...], precision: str = "fp32") -> None:
    """Convert an ONNX file to an IR with a static batch of 1 that asks for `precision` at inference."""
    ov = import_openvino()
    try:
        with quiet_libraries():
            model = ov.convert_model(str(onnx_file), input=[1, *input_shape])
            _save(model, Path(xml), precision)
    except Exception as e:  # noqa: BLE001 - a converter failure is the model's
        first = first_line(e)
        raise UserError(
            f"OpenVINO conversion of {onnx_file} failed ({first}); replace the layer it names or skip openvino "
            "in export.formats"
        ) from None


def reprecision(src: Path, dst: Path, precision: str) -> None:
    """A copy of the IR `src` that asks for another inference precision (fp16 also stores fp16 weights)."""
    ov = import_openvino()
    with quiet_libraries():
        _save(ov.Core().read_model(str(src)), Path(dst), precision)


def export_openvino(
    model: nn.Module, input_shape: tuple[int, ...], xml: Path, opset: int = 18, simplify: bool = False,
    onnx_file: Path | None = None,
) -> None:
    """An fp32 IR of `model`, converted from its ONNX export (`onnx_file` when given, else exported now)."""
    if onnx_file is not None and Path(onnx_file).is_file():
        onnx_to_openvino(Path(onnx_file), Path(xml), input_shape)
        return
    from edgecnn.compression.export import export_onnx

    with tempfile.TemporaryDirectory(dir=Path(xml).parent) as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        export_onnx(model, input_shape, tmp_onnx, opset, simplify)
        onnx_to_openvino(tmp_onnx, Path(xml), input_shape)


def quantize_openvino(
    src: Path, dst: Path, calib: np.ndarray, *, preset: str = "performance", subset_size: int | None = None,
    fast_bias_correction: bool = True, ignored: Sequence[str] = (),
) -> None:
    """int8 IR through NNCF post-training quantization of the fp32 IR `src`, calibrated on `calib`.

    `calib` holds normalised images (N, C, H, W); each is one calibration sample at batch 1.
    `subset_size` caps how many NNCF uses (None: all of them). The IR nodes named in `ignored` stay
    in float (NNCF's ignored scope).
    """
    ov, nncf = import_openvino(), import_nncf()
    samples = [np.ascontiguousarray(calib[i : i + 1], dtype=np.float32) for i in range(len(calib))]
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    try:
        with quiet_libraries():
            model = ov.Core().read_model(str(src))
            quantized = nncf.quantize(
                model,
                nncf.Dataset(samples),
                preset=presets[preset],
                subset_size=min(subset_size or len(samples), len(samples)),
                fast_bias_correction=fast_bias_correction,
                ignored_scope=nncf.IgnoredScope(names=list(ignored)) if ignored else None,
            )
            _save(quantized, Path(dst), None)  # int8 layers; the rest at the device's default precision
    except Exception as e:  # noqa: BLE001 - NNCF's failures are the model's
        first = first_line(e)
        raise UserError(
            f"NNCF int8 quantization of {src} failed ({first}); set quantize.openvino.enabled: false to skip it"
        ) from None
