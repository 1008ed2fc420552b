"""Device profiles, device names and `edgecnn devices`: lookup, validation and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from edgecnn.core.errors import UserError
from edgecnn.devices.profiles import BUILTIN, DeviceProfile, get_profile, list_profiles, parse_ssh_url


def cli(*args: str, cwd: Path = REPO, devices: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGECNN_DEVICES"}
    if devices:
        env["EDGECNN_DEVICES"] = str(devices)
    return subprocess.run(
        [sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout[-1000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_repo_profiles_are_found_from_another_directory(tmp_path):
    proc = cli("devices", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"local-cpu", "local-gpu", "rpi-emu", "rpi4", "rpi5"} <= set(rows)
    assert rows["local-cpu"]["reachable"] is True
    assert rows["rpi4"]["transport"] == "ssh" and rows["rpi4"]["profile"].endswith("devices/rpi4.yaml")
    for r in rows.values():  # every unreachable device says why
        assert r["reachable"] or r["reason"]


def test_repo_files_of_the_built_in_devices_agree_with_the_built_ins():
    """devices/<name>.yaml overrides the built-in profile of that name: a key both give must say the same thing."""
    for name, builtin in BUILTIN.items():
        raw = yaml.safe_load((REPO / "devices" / f"{name}.yaml").read_text())
        if raw.get("python") == "sys.executable":
            raw["python"] = sys.executable
        differ = {k: (raw[k], v) for k, v in builtin.items() if k in raw and raw[k] != v}
        assert not differ, f"devices/{name}.yaml against the built-in profile: {differ}"


def test_every_repo_profile_is_valid():
    profiles = {p.name: p for p in list_profiles()}
    assert profiles["rpi-emu"].emulated and profiles["rpi-emu"].formats() == ["tflite", "onnx", "openvino"]
    assert profiles["local-cpu"].formats() == ["onnx", "tflite", "openvino", "pytorch"]
    assert profiles["local-gpu"].requires_cuda and profiles["local-gpu"].formats() == ["pytorch", "onnx"]
    assert profiles["rpi4"].python == "~/edgecnn-venv/bin/python" and profiles["rpi4"].threads == 4


def test_edgecnn_devices_adds_and_overrides_profiles(tmp_path, monkeypatch):
    (tmp_path / "bench-box.yaml").write_text("transport: ssh\nhost: box.example\nuser: me\nport: 2222\n")
    (tmp_path / "rpi4.yaml").write_text("transport: ssh\nhost: pi4.lan\n")
    monkeypatch.setenv("EDGECNN_DEVICES", str(tmp_path))
    assert get_profile("bench-box").target() == "ssh://me@box.example:2222"
    assert get_profile("rpi4").host == "pi4.lan"  # $EDGECNN_DEVICES comes first


def test_bad_profile_names_the_file_and_field(tmp_path):
    (tmp_path / "broken.yaml").write_text("transport: carrier-pigeon\n")
    line = one_error_line(cli("devices", devices=tmp_path))
    assert "broken.yaml" in line and "transport" in line
    (tmp_path / "broken.yaml").write_text("transport: [unclosed\n")
    assert "broken.yaml" in one_error_line(cli("devices", devices=tmp_path))


def test_ssh_urls():
    p = parse_ssh_url("ssh://pi@raspberrypi.local:2222")
    assert (p.transport, p.user, p.host, p.port) == ("ssh", "pi", "raspberrypi.local", 2222)
    assert parse_ssh_url("ssh://10.0.0.7").port is None
    for bad in ("ssh://host:99999", "ssh://", "ssh://host/path"):
        with pytest.raises(UserError, match="ssh://"):
            parse_ssh_url(bad)


def test_profile_rejects_unknown_keys():
    with pytest.raises(ValueError):
        DeviceProfile(name="x", hostname="typo")


@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_unknown_device_is_one_error_line(command, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not checked before the device")
    line = one_error_line(cli(command, str(model), "--device", "toaster"))
    assert "toaster" in line and "rpi-emu" in line and "ssh://" in line


def test_deploy_needs_a_run_directory_or_a_model(tmp_path):
    assert "not found" in one_error_line(cli("deploy", str(tmp_path / "nothing"), "--device", "local-cpu"))
    assert "report.json" in one_error_line(cli("deploy", str(tmp_path), "--device", "local-cpu"))


def test_missing_emulated_userland_says_how_to_build_it(tmp_path):
    (tmp_path / "arm.yaml").write_text(f"transport: emulated\nroot: {tmp_path / 'no-root'}\nemulated: true\n")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    line = one_error_line(cli("deploy", str(model), "--device", "arm", devices=tmp_path))
    assert "build_rpi_emu.sh" in line or "qemu-aarch64-static" in line


def test_local_gpu_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    line = one_error_line(cli("deploy", str(model), "--device", "local-gpu"))
    assert "no CUDA GPU" in line
