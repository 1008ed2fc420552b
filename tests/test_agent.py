"""The device agent (edgecnn/runtime/agent.py) on a tiny real ONNX model: accuracy, latency method, CPU pinning,
CPU leases (no two concurrent timings on one core) and refusing a GPU provider that is not there."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecnn.core.errors import StageFailed
from edgecnn.runtime import agent
from edgecnn.runtime.host import AGENT_PATH, cpu_lease, run_agent_local


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A Flatten "classifier" whose logits are the 4 pixels, and 64 images labelled by their brightest pixel."""
    d = tmp_path_factory.mktemp("agent")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, d / "tiny.onnx")
    rng = np.random.default_rng(0)
    images = rng.permutation(np.tile(np.array([10, 60, 120, 250], np.uint8), (64, 1)), axis=1).reshape(64, 1, 2, 2)
    labels = images.reshape(64, 4).argmax(1)
    labels[:16] = (labels[:16] + 1) % 4  # a quarter wrong on purpose: accuracy 0.75
    np.savez(d / "eval.npz", x=images, y=labels, mean=np.array([0.5]), std=np.array([0.25]))
    return d / "tiny.onnx", d / "eval.npz"


def test_run_measures_accuracy_and_latency(tiny):
    model, npz = tiny
    r = agent.run(str(model), str(npz), threads=1, warmup=3, min_iters=20, min_seconds=0.05, pin=False)
    assert r["accuracy"] == 0.75 and r["eval_samples"] == 64 and r["runtime"].startswith("onnxruntime")
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] and lat["iters"] >= 20
    assert r["pinned_cpu"] is None and r["peak_memory_mb"] > 0 and r["load_ms"] > 0


def test_warm_up_lasts_its_minimum_time_and_gc_is_restored(tiny):
    model, _ = tiny
    rt = agent.open_runtime(str(model), 1)
    sample = np.zeros((1, 1, 2, 2), np.float32)
    assert gc.isenabled()
    lat = agent.measure_latency(rt, sample, warmup=1, min_iters=10, min_seconds=0.0)
    assert gc.isenabled()
    # 0.2 s of warm-up at a few microseconds a run is far more than the one run asked for
    assert lat["warmup_iters"] > 100 and lat["iters"] == 10


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_one_thread_runs_are_pinned_to_one_cpu(tiny):
    model, npz = tiny
    argv = [sys.executable, str(AGENT_PATH), "--model", str(model), "--data", str(npz), "--min-seconds", "0.05"]
    pinned = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert pinned["pinned_cpu"] == max(os.sched_getaffinity(0)) and pinned["cpus"] == [pinned["pinned_cpu"]]
    free = json.loads(subprocess.run([*argv, "--no-pin"], capture_output=True, text=True, check=True).stdout)
    assert free["pinned_cpu"] is None and free["accuracy"] == pinned["accuracy"] == 0.75
    first = min(os.sched_getaffinity(0))
    leased = json.loads(subprocess.run([*argv, "--cpu", str(first)], capture_output=True, text=True, check=True).stdout)
    assert leased["pinned_cpu"] == first and leased["cpus"] == [first]


def _held(folder: Path, cpu: int) -> bool:
    """Whether some process holds the lease lock of `cpu` (probing it with a non-blocking flock)."""
    import fcntl

    fd = os.open(folder / f"cpu{cpu}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


HOLDER = """
import os, sys, time
from edgecnn.runtime.host import cpu_lease
with cpu_lease(1) as cpus:
    print(cpus[0], flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.02)
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs")
def test_two_concurrent_benchmarks_pin_different_cores(tiny, tmp_path, monkeypatch):
    """A benchmark started while another process holds its timing CPU times on another core."""
    monkeypatch.setenv("EDGECNN_CPU_LEASES", str(tmp_path / "leases"))
    (tmp_path / "leases").mkdir()
    model, npz = tiny
    last = max(os.sched_getaffinity(0))
    done = tmp_path / "done"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(done)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert int(holder.stdout.readline()) == last  # the other timing leased the last CPU
        result = run_agent_local(model, npz, threads=1, warmup=1, min_iters=5, min_seconds=0.2)
        assert _held(tmp_path / "leases", last), "the other process still holds its CPU"
    finally:
        done.touch()
        holder.wait(timeout=60)
    assert len(result["cpus"]) == 1 and result["cpus"] != [last] and result["pinned_cpu"] != last
    assert result["accuracy"] == 0.75
    with cpu_lease(1) as mine:  # and once both are done, their CPUs are free again
        assert mine == [last]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_leases_wait_for_a_free_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECNN_CPU_LEASES", str(tmp_path / "leases"))
    n = len(os.sched_getaffinity(0))
    with cpu_lease(n) as every:
        assert every == sorted(os.sched_getaffinity(0))
        with pytest.raises(StageFailed, match="no free CPU to time on"):
            with cpu_lease(1, timeout=0.2):
                pass


def test_an_absent_gpu_provider_is_an_error_not_a_cpu_figure(tiny):
    """Asking for ONNX Runtime's CUDA provider where it is absent must fail, not time on the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    model, npz = tiny
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider is not available"):
        agent.open_runtime(str(model), 1, "onnxruntime-cuda")
    with pytest.raises(StageFailed, match="CUDAExecutionProvider is not available") as e:
        run_agent_local(model, npz, runtime="onnxruntime-cuda", min_seconds=0, min_iters=1)
    assert "\n" not in str(e.value)
    cpu = run_agent_local(model, npz, min_seconds=0, min_iters=1)
    assert cpu["providers"] == ["CPUExecutionProvider"]
