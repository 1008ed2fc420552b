"""Choices that follow the CPU (bf16 training, 7-bit int8 weights) on each x86 kind this project runs on, whichever
one the suite happens to run on: the CPU's flags are replaced by those of each kind."""

from __future__ import annotations

import pytest
import torch

from edgecnn.compression import quantize, train
from edgecnn.core.environment import cpu_flags

BASE = {"avx2", "fma", "f16c"}
KINDS = {  # flags as /proc/cpuinfo lists them on the machines seen so far, trimmed to what matters here
    "amd_epyc_avx2": BASE,
    "intel_xeon_avx512_vnni": BASE | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"},  # oneDNN emulates bf16 here
    "intel_xeon_amx": BASE | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"},
}
EXPECT = {  # kind: (native bf16 training, reduce_range auto for u8s8)
    "amd_epyc_avx2": (False, True),
    "intel_xeon_avx512_vnni": (False, False),
    "intel_xeon_amx": (True, False),
}


@pytest.fixture
def cpu(monkeypatch):
    def use(kind: str) -> None:
        for module in (train, quantize):
            monkeypatch.setattr(module, "is_x86", lambda: True)
            monkeypatch.setattr(module, "cpu_flags", lambda: frozenset(KINDS[kind]))

    return use


@pytest.mark.parametrize("kind", list(KINDS))
def test_bf16_and_reduce_range_follow_the_cpu_flags(kind, cpu):
    cpu(kind)
    bf16, reduce_range = EXPECT[kind]
    assert train.cpu_supports_bf16() is bf16
    assert train.autocast_for("auto", torch.device("cpu"))[1] == ("bf16" if bf16 else "fp32")
    assert train.autocast_for("fp32", torch.device("cpu"))[1] == "fp32"
    assert quantize.resolve_reduce_range("auto", "uint8", "int8") is reduce_range
    assert quantize.resolve_reduce_range("auto", "int8", "int8") is False


def test_this_machines_flags_are_read():
    flags = cpu_flags()
    if not flags:
        pytest.skip("/proc/cpuinfo lists no flags here")
    assert all(isinstance(f, str) and f == f.lower() for f in flags)
    if train.is_x86():
        assert "sse2" in flags and train.cpu_supports_bf16() is bool({"avx512_bf16", "amx_bf16"} & flags)
