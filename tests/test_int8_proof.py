"""The integer-MAC share of int8 files, read from their graphs: full int8, a float island, fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.quantize import quantize_onnx, quantize_tflite
from edgecnn.models.files import ModelInfo, build_model, count_macs_params
from edgecnn.runtime.int8_proof import integer_macs


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    torch.manual_seed(0)
    info = ModelInfo("lenet", {}, 10, (1, 28, 28))
    model = build_model(info).eval()
    folder = tmp_path_factory.mktemp("int8proof")
    export_onnx(model, info.input_shape, folder / "fp32.onnx")
    calib = torch.rand(16, 1, 28, 28)
    return model, info, folder, calib


def test_fp32_onnx_is_all_float_and_counts_every_mac(lenet):
    model, info, folder, _ = lenet
    r = integer_macs(folder / "fp32.onnx")
    macs, _ = count_macs_params(model, info.input_shape)
    assert r["integer_mac_share"] == 0.0 and r["layers_integer"] == 0
    assert 0.9 * macs <= r["macs_total"] <= macs  # conv + linear MACs; the counter adds BN and pooling
    assert len(r["float_islands"]) == 1 and r["float_islands"][0]["macs"] == r["macs_total"]


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_full_int8_onnx_runs_every_mac_in_integer_kernels(lenet, fmt):
    _, _, folder, calib = lenet
    dst = folder / f"int8.{fmt}.onnx"
    quantize_onnx(folder / "fp32.onnx", dst, calib.numpy(), fmt=fmt)
    r = integer_macs(dst)
    assert r["integer_mac_share"] == 1.0 and not r["float_islands"]
    assert r["macs_total"] == integer_macs(folder / "fp32.onnx")["macs_total"]


def test_a_layer_kept_in_float_is_a_float_island(lenet):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    _, _, folder, calib = lenet
    first_conv = next(n.name for n in onnx.load(str(folder / "fp32.onnx")).graph.node if n.op_type == "Conv")

    name = onnx.load(str(folder / "fp32.onnx")).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calib[i : i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    dst = folder / "mixed.onnx"
    quantize_static(str(folder / "fp32.onnx"), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    nodes_to_exclude=[first_conv])
    r = integer_macs(dst)
    assert 0.0 < r["integer_mac_share"] < 1.0
    assert [i["first"] for i in r["float_islands"]] == [first_conv]
    assert r["macs_integer"] + r["float_islands"][0]["macs"] == r["macs_total"]


def test_tflite_int8_and_fp32(lenet):
    model, info, folder, calib = lenet
    quantize_tflite(model, info.input_shape, calib, folder / "int8.tflite")
    export_tflite(model, info.input_shape, folder / "fp32.tflite")
    full, fp32 = integer_macs(folder / "int8.tflite"), integer_macs(folder / "fp32.tflite")
    assert full["integer_mac_share"] == 1.0 and fp32["integer_mac_share"] == 0.0
    assert full["macs_total"] == fp32["macs_total"] == integer_macs(folder / "fp32.onnx")["macs_total"]
    assert np.isfinite(full["macs_total"])
