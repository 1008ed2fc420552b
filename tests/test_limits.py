"""Out of disk and out of memory: the run stops with one `error:` line, exit code 2, finished stages intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgecnn.core.artifacts import outputs_intact, read_manifest
from tests.conftest import QUICKSTART, REPO, run_cli
from tests.test_resume import FAST, STAGES


def assert_one_error(proc: subprocess.CompletedProcess, words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and words in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def finished_stages(run: Path) -> list[str]:
    """Stages with a manifest whose outputs all match their hashes (asserting no half-finished one exists)."""
    done = []
    for s in STAGES:
        if (run / s).exists():
            manifest = read_manifest(run / s)
            assert manifest is not None and outputs_intact(run / s, manifest), f"{s} is damaged"
            done.append(s)
    assert not list(run.glob(".*tmp-*")), "temporary files left behind"
    return done


@pytest.fixture
def small_disk(tmp_path):
    """A 900 KB tmpfs: room for the first stages of the shortened quickstart, not for the benchmark's files."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run as root to test a full disk")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_cleanly_and_resumes(small_disk):
    run = small_disk / "run"
    proc = run_cli("compress", str(QUICKSTART), "--out", str(run), *FAST)
    assert_one_error(proc, f"{run}: No space left on device")
    done = finished_stages(run)
    assert done[:2] == ["teacher", "distill"], done
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    proc = run_cli("compress", str(QUICKSTART), "--out", str(run), *FAST, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "report.json").read_text())["reused_stages"] == done


MEMORY_LIMITED = textwrap.dedent("""
    import resource, sys
    import torch, edgecnn.cli, edgecnn.pipeline.stages, edgecnn.data.datasets  # imports first: need address space
    from edgecnn.data.datasets import load_data
    load_data("mnist5k")
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
    sys.argv = ["edgecnn", *sys.argv[2:]]
    edgecnn.cli.main()
""")


def test_out_of_memory_stops_cleanly(tmp_path):
    """Address space capped (RLIMIT_AS) just above what the teacher needs; distill asks for a huge batch."""
    run = tmp_path / "run"
    args = ["compress", str(QUICKSTART), "--out", str(run), *FAST, "--set", "train.epochs=1",
            "--set", "distill.batch_size=65536", "--set", "distill.epochs=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_LIMITED, "400", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    assert_one_error(proc, "out of memory")
    assert finished_stages(run) == ["teacher"]
