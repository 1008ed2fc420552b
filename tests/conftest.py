"""Shared fixtures: finished runs made once per test session, and paths to the shared data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python -m edgecnn ARGS` in a fresh process and capture its output."""
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The full quickstart recipe, run once per session (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    proc = run_cli("compress", str(QUICKSTART), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def quickstart_report(quickstart_run) -> dict:
    return json.loads((quickstart_run / "report.json").read_text())
