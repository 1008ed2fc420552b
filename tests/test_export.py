"""Export: simplified ONNX keeps parity, TFLite float I/O, unsupported operators named with their layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from edgecnn.compression.export import export_onnx
from edgecnn.compression.quantize import quantize_onnx, quantize_tflite
from edgecnn.compression.train import fit, predict
from edgecnn.config.recipe import TrainConfig
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model, save_model
from edgecnn.runtime import agent
from edgecnn.runtime.host import parity, runtime_logits
from edgecnn.tasks.registry import get_task

CLASSIFY, HEAD = get_task("classification"), {"kind": "logits", "num_classes": 10}

ODD_NET = '''
import torch
import torch.nn as nn


class Odd(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1)[0]


class OddNet(nn.Module):
    """A CNN with a layer (running maximum over channels) that neither exporter supports."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.odd = Odd()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.odd(self.conv(x)).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist5k", 0.1, None, None)


@pytest.fixture(scope="module")
def small_cnn(mnist):
    """lenet_small trained for one epoch on real MNIST digits."""
    model = build_model(ModelInfo("lenet_small", input_shape=(1, 28, 28)))
    fit(model, mnist, TrainConfig(epochs=1, batch_size=64, lr=0.05), seed=0, augment=False)
    return model.eval()


def test_simplified_onnx_keeps_parity(mnist, small_cnn, tmp_path):
    import onnx

    export_onnx(small_cnn, mnist.input_shape, tmp_path / "m.onnx", simplify=True)
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    assert not list(tmp_path.glob("*.data")), "the ONNX file must be self-contained"
    acc, logits = runtime_logits(tmp_path / "m.onnx", mnist, mnist.test)
    check = parity(CLASSIFY, logits, predict(small_cnn, mnist, mnist.test).numpy(), mnist.test, HEAD, "pytorch")
    assert check["top1_agreement"] >= 0.995 and acc > 0.5


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_with_a_ragged_image_count(mnist, small_cnn, tmp_path, method):
    """Percentile/Entropy calibration on 50 images (not a multiple of the reader's batch) gives a working int8 file."""
    export_onnx(small_cnn, mnist.input_shape, tmp_path / "m.onnx")
    calib = mnist.normalize(mnist.train.x[:50]).numpy()
    quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, method=method)
    fp32, _ = runtime_logits(tmp_path / "m.onnx", mnist, mnist.test)
    int8, _ = runtime_logits(tmp_path / "q.onnx", mnist, mnist.test)
    assert fp32 > 0.5 and fp32 - int8 < 0.05, (fp32, int8)


def test_tflite_int8_float_io_matches_int8_io(mnist, small_cnn, tmp_path):
    calib = mnist.normalize(mnist.train.x[:64])
    for io in ("int8", "float"):
        quantize_tflite(small_cnn, mnist.input_shape, calib, tmp_path / f"{io}.tflite", io=io)
    rts = {io: agent.open_runtime(str(tmp_path / f"{io}.tflite"), 1) for io in ("int8", "float")}
    assert rts["int8"].inp["dtype"] == np.int8 and rts["int8"].out["dtype"] == np.int8
    assert rts["float"].inp["dtype"] == np.float32 and rts["float"].out["dtype"] == np.float32
    ops = [o["op_name"] for o in rts["float"].interp._get_ops_details()]
    assert ops[0] == "QUANTIZE" and "DEQUANTIZE" in ops and "CONV_2D" in ops
    acc = {io: runtime_logits(tmp_path / f"{io}.tflite", mnist, mnist.test) for io in ("int8", "float")}
    np.testing.assert_allclose(acc["float"][1], acc["int8"][1], atol=1e-5)
    assert acc["float"][0] == acc["int8"][0] > 0.5


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_unsupported_operator_is_named_with_its_layer(fmt, tmp_path):
    (tmp_path / "oddnet.py").write_text(ODD_NET)
    info = ModelInfo(f"{tmp_path / 'oddnet.py'}:OddNet", input_shape=(1, 28, 28))
    model = build_model(info)
    save_model(model, info, tmp_path / "odd.pt")
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))  # it runs in PyTorch; only the exporters reject it
    proc = run_cli("export", str(tmp_path / "odd.pt"), "--data", "mnist5k", "--format", fmt,
                   "--out", str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[-1].startswith("error:"), proc.stderr  # no library log line, no traceback
    assert "cummax" in lines[-1] and "layer odd (Odd)" in lines[-1], lines[-1]
    assert not Path(tmp_path / "out" / f"model.{fmt}").exists()


def test_channels_last_weights_export_as_their_model(tmp_path):
    """Training leaves weights channels-last; litert-torch turned the shared ResNet-56 so into garbage (3e4 off)."""
    from conftest import SHARED_MODELS, needs_shared

    from edgecnn.compression.export import export_tflite, for_export
    from edgecnn.models.files import load_weights

    needs_shared(SHARED_MODELS)
    info = ModelInfo(f"{SHARED_MODELS / 'cifar_resnet.py'}:CifarResNet", {"depth": 56}, 10, (3, 32, 32))
    model = build_model(info)
    load_weights(model, SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    model.eval().to(memory_format=torch.channels_last)
    copy = for_export(model)
    assert copy is not model and model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in copy.parameters())
    x = torch.randn(4, 3, 32, 32)
    export_tflite(model, (3, 32, 32), tmp_path / "m.tflite")
    rt = agent.open_runtime(str(tmp_path / "m.tflite"), 1)
    got = np.concatenate([rt.run(x[i : i + 1].numpy()) for i in range(4)])
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-3)


def test_tflite_tensor_names_are_compact_module_paths(mnist, small_cnn, tmp_path):
    """litert-torch's fused scope lists are cut to one module path per tensor: smaller files, same outputs."""
    from ai_edge_litert import schema_py_generated as schema

    from edgecnn.compression.export import export_tflite
    from edgecnn.runtime.tflite_io import compact_name

    assert compact_name(b"Net;;pkg.Net/torch.nn.modules.conv.Conv2d_conv1;1") == b"Net/Conv2d_conv1"
    assert compact_name(b"serving_default_args_0") == b"serving_default_args_0"
    export_tflite(small_cnn, mnist.input_shape, tmp_path / "fp32.tflite")
    quantize_tflite(small_cnn, mnist.input_shape, mnist.normalize(mnist.train.x[:64]), tmp_path / "int8.tflite")
    for f in ("fp32.tflite", "int8.tflite"):
        model = schema.ModelT.InitFromPackedBuf(bytearray((tmp_path / f).read_bytes()), 0)
        names = [t.name for t in model.subgraphs[0].tensors if t.name]
        assert names and not any(b";" in n or b"torch.nn.modules" in n for n in names), names
        assert any(n.endswith(b"Conv2d_conv1") for n in names), names
        acc, logits = runtime_logits(tmp_path / f, mnist, mnist.test)
        ref = predict(small_cnn, mnist, mnist.test)
        check = parity(CLASSIFY, logits, ref.numpy(), mnist.test, HEAD, "pytorch")
        assert acc > 0.5 and check["top1_agreement"] >= 0.97, check
