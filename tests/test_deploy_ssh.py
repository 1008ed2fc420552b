"""`edgecnn deploy` over a real OpenSSH server on 127.0.0.1 (the `sshd` fixture)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, _free_port

from edgecnn.analysis.selection import CONFIRM_ROUNDS, contenders, eligible


def deploy_cli(*args: str, devices: Path, ssh_config: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m edgecnn ARGS` with EDGECNN_DEVICES (and EDGECNN_SSH_CONFIG) set."""
    env = {**os.environ, "EDGECNN_DEVICES": str(devices)}
    if ssh_config:
        env["EDGECNN_SSH_CONFIG"] = str(ssh_config)
    return subprocess.run(
        [sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


@pytest.fixture
def run_copy(quickstart_run, tmp_path) -> Path:
    """A private copy of the finished quickstart run (deploy rewrites its report)."""
    return Path(shutil.copytree(quickstart_run, tmp_path / "run"))


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_deploy_over_ssh_matches_local_bench(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    workdir = sshd.profile("loopback", devices)
    before = json.loads((run_copy / "report.json").read_text())["models"]

    proc = deploy_cli("deploy", str(run_copy), "--device", "loopback", "--json", devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = json.loads(proc.stdout)

    local = {(m["name"], m["format"], m["precision"]): m for m in before}
    deployable = {k for k in local if k[1] in ("onnx", "tflite")}
    assert {(e["name"], e["format"], e["precision"]) for e in entries} == deployable
    for e in entries:
        ref = local[(e["name"], e["format"], e["precision"])]
        # the same files, the same agent, the same images, the same CPU: the same predictions
        assert e["accuracy"] == ref["accuracy"]
        assert e["eval_samples"] == ref["eval_samples"]
        assert e["device"] == "loopback" and e["emulated"] is False
        assert e["latency_ms"]["p50"] > 0 and e["latency_ms"]["iters"] >= 50
        assert e["size_bytes"] == ref["size_bytes"]

    report = json.loads((run_copy / "report.json").read_text())
    # the files that could win the device's pick were timed again there, side by side; each kept its best round
    pick = report["deployments"]["loopback"]
    first = [{**c, "p50_ms": next(e for e in entries if e["path"] == c["path"])["latency_rounds_p50_ms"][0]}
             for c in pick["candidates"]]
    expected = sorted(first[i]["path"] for i in contenders(first))
    retimed = sorted(e["path"] for e in entries if len(e["latency_rounds_p50_ms"]) == 1 + CONFIRM_ROUNDS)
    assert retimed == (expected if len(expected) >= 2 else [])
    assert all(e["latency_ms"]["p50"] == min(e["latency_rounds_p50_ms"]) for e in entries)
    assert (f"best of {1 + CONFIRM_ROUNDS} alternating rounds" in pick["reason"]) == bool(retimed)
    chosen = next(c for c in pick["candidates"] if c["chosen"])
    assert chosen["p50_ms"] == min(c["p50_ms"] for c in pick["candidates"] if eligible(c))
    assert report["models"][: len(before)] == before  # local entries kept as they were
    assert len(report["models"]) == len(before) + len(entries)
    assert report["deployments"]["loopback"]["transport"] == "ssh"
    assert "| loopback |" in (run_copy / "report.md").read_text()
    assert list(workdir.iterdir()) == []  # nothing left on the device

    # deploying again replaces this device's entries instead of adding more
    again = deploy_cli("deploy", str(run_copy), "--device", "loopback", "--json", devices=devices)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((run_copy / "report.json").read_text())["models"]) == len(before) + len(entries)
    assert list(workdir.iterdir()) == []


def test_keep_leaves_the_work_directory(sshd, quickstart_run, tmp_path):
    devices = tmp_path / "devices"
    workdir = sshd.profile("loopback", devices)
    model = quickstart_run / "quantize" / "model.int8.tflite"
    proc = deploy_cli("deploy", str(model), "--device", "loopback", "--keep", "--json", devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = json.loads(proc.stdout)
    assert entry["format"] == "tflite" and entry["precision"] == "int8" and 0.5 < entry["accuracy"] <= 1
    (kept,) = list(workdir.iterdir())
    assert sorted(p.name for p in kept.iterdir()) == ["agent.py", "eval.npz", "model.int8.tflite"]


def test_unknown_host_key_is_one_error_line_with_the_keyscan_command(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    workdir = sshd.profile("stranger", devices, ssh_config=str(sshd.untrusting_config))
    proc = deploy_cli("deploy", str(run_copy), "--device", "stranger", devices=devices)
    line = _one_error_line(proc)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> ~/.ssh/known_hosts" in line
    assert list(workdir.iterdir()) == []


def test_ssh_url_with_unknown_host_key(sshd, run_copy, tmp_path):
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    proc = deploy_cli("deploy", str(run_copy), "--device", url, devices=tmp_path, ssh_config=sshd.untrusting_config)
    assert "ssh-keyscan" in _one_error_line(proc)


def test_wrong_port_is_one_error_line(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    sshd.profile("closed", devices, port=_free_port())
    line = _one_error_line(deploy_cli("deploy", str(run_copy), "--device", "closed", devices=devices))
    assert "cannot connect" in line and "127.0.0.1" in line
    assert json.loads((run_copy / "report.json").read_text())["models"]  # the report is intact


def test_device_without_a_runtime_is_one_error_line(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    workdir = sshd.profile("bare", devices, runtimes=["tflite-runtime"])  # only litert/onnxruntime are here
    line = _one_error_line(deploy_cli("deploy", str(run_copy), "--device", "bare", devices=devices))
    assert "no runtime" in line and "tflite-runtime" in line
    assert list(workdir.iterdir()) == []


def test_devices_lists_the_ssh_profile_as_reachable(sshd, tmp_path):
    devices = tmp_path / "devices"
    sshd.profile("loopback", devices)
    sshd.profile("closed", devices, port=_free_port())
    proc = deploy_cli("devices", "--json", devices=devices)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["loopback"]["reachable"] is True
    assert rows["closed"]["reachable"] is False and "cannot connect" in rows["closed"]["reason"]
    assert rows["local-cpu"]["reachable"] is True


def test_remote_arguments_are_quoted(sshd, quickstart_run, tmp_path):
    devices = tmp_path / "devices"
    workdir = sshd.profile("loopback", devices)
    canary = f"edgecnn-canary-{os.getpid()}"
    model = tmp_path / f"it's a $(touch {canary}) model.int8.tflite"
    shutil.copy(quickstart_run / "quantize" / "model.int8.tflite", model)
    proc = deploy_cli("deploy", str(model), "--device", "loopback", "--json", devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)[0]["size_bytes"] == model.stat().st_size
    # the file name reached the device as data, never as shell code
    assert not (Path.home() / canary).exists() and not (workdir / canary).exists()
    assert list(workdir.iterdir()) == []


def test_a_model_failing_on_the_device_is_recorded_with_a_note(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    sshd.profile("loopback", devices, runtimes=["litert"])
    (run_copy / "export" / "model.tflite").write_bytes(b"TFL3 not really a model")
    proc = deploy_cli("deploy", str(run_copy), "--device", "loopback", "--json", devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_precision = {e["precision"]: e for e in json.loads(proc.stdout)}
    assert by_precision["fp32"]["accuracy"] is None and by_precision["fp32"]["latency_ms"] is None
    assert "not a TFLite flatbuffer" in by_precision["fp32"]["notes"][0]  # refused before the runtime saw it
    assert by_precision["int8"]["accuracy"] > 0.5  # the other model was still measured
    assert "| loopback |" in (run_copy / "report.md").read_text()


def _bare_python(folder: Path, with_numpy: bool) -> Path:
    """A device interpreter with no runtime at all: this Python without site-packages (numpy optional)."""
    import numpy

    lib = folder / "lib"
    lib.mkdir(parents=True)
    if with_numpy:
        pkg = Path(numpy.__file__).parent
        for src in (pkg, pkg.with_name("numpy.libs")):
            if src.exists():
                (lib / src.name).symlink_to(src)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={lib} exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_device_with_numpy_but_no_runtime_is_one_error_line(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    python = _bare_python(tmp_path / "bare-python", with_numpy=True)
    workdir = sshd.profile("empty", devices, python=str(python))
    line = _one_error_line(deploy_cli("deploy", str(run_copy), "--device", "empty", devices=devices))
    assert "no runtime there" in line and "has: none" in line and "install one of" in line
    assert list(workdir.iterdir()) == []


def test_device_without_numpy_is_one_error_line(sshd, run_copy, tmp_path):
    devices = tmp_path / "devices"
    python = _bare_python(tmp_path / "bare-python", with_numpy=False)
    workdir = sshd.profile("no-numpy", devices, python=str(python))
    line = _one_error_line(deploy_cli("deploy", str(run_copy), "--device", "no-numpy", devices=devices))
    assert "has no numpy" in line and "python:" in line
    assert list(workdir.iterdir()) == []


def test_device_without_an_sftp_server_gets_the_files_by_classic_scp(sshd, quickstart_run, tmp_path):
    """scp speaks SFTP since OpenSSH 9; a device whose sshd has no sftp-server still gets the files (scp -O)."""
    import socket
    import time

    port = _free_port()
    config = (sshd.folder / "sshd_config").read_text().replace("Subsystem sftp internal-sftp\n", "")
    config = config.replace(f"Port {sshd.port}", f"Port {port}").replace(str(sshd.folder / "sshd.pid"), "none")
    (tmp_path / "sshd_config").write_text(config)
    known = (sshd.folder / "known_hosts").read_text().replace(f"]:{sshd.port} ", f"]:{port} ")
    (tmp_path / "known_hosts").write_text(known)
    client = sshd.config.read_text().replace(str(sshd.folder / "known_hosts"), str(tmp_path / "known_hosts"))
    (tmp_path / "ssh_config").write_text(client)
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    server = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(tmp_path / "sshd_config")])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        devices = tmp_path / "devices"
        workdir = sshd.profile("no-sftp", devices, port=port, ssh_config=str(tmp_path / "ssh_config"))
        model = quickstart_run / "quantize" / "model.int8.tflite"
        proc = deploy_cli("deploy", str(model), "--device", "no-sftp", "--json", devices=devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)[0]["accuracy"] > 0.5
        assert list(workdir.iterdir()) == []
    finally:
        server.terminate()
        server.wait(timeout=10)
