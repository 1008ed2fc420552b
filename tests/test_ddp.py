"""Multi-process training under torchrun: gloo on CPU, two ranks, each its own shard, one output file."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

from edgecnn.models.files import load_model_file


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "lenet.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgecnn",
         "train", "--model", "lenet_small", "--data", "mnist5k", "--epochs", "1", "--batch-size", "64",
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # mnist5k: 3,600 training digits, 1,800 per rank, 28 full batches of 64 each
    assert "rank 0/2: trained on 1792 images per epoch" in proc.stderr
    assert "rank 1/2: trained on 1792 images per epoch" in proc.stderr
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 evaluates and writes
    model, info = load_model_file(out)
    assert info.spec == "lenet_small" and list(tmp_path.iterdir()) == [out]
