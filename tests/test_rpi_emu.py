"""The emulated Raspberry-Pi-class target: the agent on a real ARM64 userland under qemu-user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
from filelock import FileLock

from edgecnn.devices.profiles import EmulatedTransport, get_profile
from edgecnn.runtime.host import AGENT_PATH


@pytest.fixture(scope="session")
def rpi_emu() -> EmulatedTransport:
    """The rpi-emu userland, built once into ~/.cache/edgecnn/rpi-emu (skips when it cannot be)."""
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")
    transport = EmulatedTransport(get_profile("rpi-emu"))
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        pytest.skip("building the ARM64 userland needs apt-get and dpkg (a Debian/Ubuntu host)")
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    with FileLock(str(Path(tempfile.gettempdir()) / f"edgecnn-rpi-emu-build-{os.getuid()}.lock")):  # xdist workers
        proc = subprocess.run(  # returns at once when the cached userland is up to date
            ["bash", str(REPO / "devices" / "build_rpi_emu.sh")], capture_output=True, text=True, env=env, timeout=900
        )
    if proc.returncode != 0:  # the last line that is not one of pip's warnings says why
        why = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("WARNING")] or ["?"]
        pytest.skip(f"could not build the ARM64 userland (bash devices/build_rpi_emu.sh): {why[-1][:200]}")
    reason = transport.probe()
    if reason:
        pytest.skip(f"rpi-emu is not usable here: {reason}")
    return transport


def test_agent_runs_on_arm64_with_its_runtimes(rpi_emu, tmp_path):
    proc = subprocess.run(
        [*rpi_emu.python_argv(), str(AGENT_PATH), "--list-runtimes"], capture_output=True, text=True, timeout=120
    )
    info = json.loads(proc.stdout)
    assert info["machine"] == "aarch64" and info["python"].startswith("3.11")
    assert info["numpy"].startswith("1.")  # tflite-runtime needs numpy<2
    assert {"tflite-runtime", "onnxruntime", "litert", "openvino"} <= set(info["runtimes"])


def test_litert_on_arm64_matches_litert_on_this_machine(rpi_emu, quickstart_run, quickstart_report, tmp_path):
    """The agent's JSON on the emulated ARM64 target against the local benchmark of the same model."""
    local = next(m for m in quickstart_report["models"] if m["format"] == "tflite" and m["precision"] == "int8")
    assert local["runtime"].startswith("litert")
    argv = [*rpi_emu.python_argv(), str(AGENT_PATH), "--runtime", "litert", "--min-seconds", "0.2"]
    argv += ["--model", str(quickstart_run / local["path"]), "--data", str(quickstart_run / "bench" / "eval.npz")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    arm = json.loads(proc.stdout.strip().splitlines()[-1])
    assert arm["machine"] == "aarch64" and arm["runtime"] == local["runtime"]
    assert arm["eval_samples"] == local["eval_samples"] and arm["size_bytes"] == local["size_bytes"]
    assert abs(arm["accuracy"] - local["accuracy"]) <= 0.005, (arm["accuracy"], local["accuracy"])


def test_deploy_to_rpi_emu_matches_the_local_benchmark(rpi_emu, quickstart_run, tmp_path):
    run = Path(shutil.copytree(quickstart_run, tmp_path / "run"))
    local = {
        (m["name"], m["format"], m["precision"]): m for m in json.loads((run / "report.json").read_text())["models"]
    }
    before = set(Path(rpi_emu.profile.workdir).glob("edgecnn.*"))
    proc = subprocess.run(
        [sys.executable, "-m", "edgecnn", "deploy", str(run), "--device", "rpi-emu", "--json", "--min-seconds", "0.2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = json.loads(proc.stdout)
    # every exported file goes (an OpenVINO bf16/fp16 one too where the local CPU listed that precision)
    exported = {(f, p) for _, f, p in local if f != "pytorch"}
    assert {(e["format"], e["precision"]) for e in entries} == exported >= {
        ("tflite", "fp32"),
        ("tflite", "int8"),
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("openvino", "fp32"),
        ("openvino", "int8"),
    }
    for e in entries:
        ref = local[(e["name"], e["format"], e["precision"])]
        if (e["format"], e["precision"]) == ("openvino", "int8") and e["accuracy"] is None:
            # measured: OpenVINO's ARM CPU plugin fails to compile the NNCF int8 IR in this Cortex-A72 userland
            # ("object is not initialized"); the deploy records that with a note and picks among the rest
            assert "agent failed on model.int8.xml" in e["notes"][-1], e
            continue
        assert e["machine"] == "aarch64" and e["emulated"] is True and "emulation" in e["notes"][0]
        runtime = {"tflite": "tflite-runtime", "onnx": "onnxruntime"}.get(e["format"], e["format"])
        assert e["runtime"].startswith(runtime)
        assert e["eval_samples"] == ref["eval_samples"]
        # real ARM64 kernels (XNNPACK/MLAS) may round differently from x86 on a few borderline images; int8
        # more so: x86 MLAS's u8s8 kernels without VNNI saturate some sums that ARM's compute exactly
        # (measured: ONNX int8 0.968 on ARM64 against 0.960 on x86), so int8 may differ by the int8 budget
        tolerance = 0.01 if e["precision"] == "int8" else 0.005
        assert abs(e["accuracy"] - ref["accuracy"]) <= tolerance, (e, ref["accuracy"])
        assert e["latency_ms"]["p50"] > 0
    report_md = (run / "report.md").read_text()
    assert "rpi-emu (emulated)" in report_md
    assert set(Path(rpi_emu.profile.workdir).glob("edgecnn.*")) <= before  # nothing left behind
