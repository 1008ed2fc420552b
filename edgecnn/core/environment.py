"""What a run ran on: versions and CPU, recorded in every report and stage manifest."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_x86() -> bool:
    """True on an x86 CPU (where /proc/cpuinfo's flags name AVX-512, VNNI, BF16 and AMX)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Versions of Python, torch and the runtimes, and the CPU."""
    import torch

    return {
        "python": platform.python_version(),
        "edgecnn": _version("edgecnn"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "torch_pruning": _version("torch-pruning"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "litert_torch": _version("litert-torch"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "openvino": _version("openvino"),
        "nncf": _version("nncf"),
        "numpy": _version("numpy"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
