"""Shared fixtures: finished runs made once per test session, and paths to the shared data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Decoded image folders of the tests (and their CLI subprocesses) stay out of the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("EDGECNN_CACHE", str(tmp_path_factory.mktemp("edgecnn-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True, scope="session")
def _workers_share_the_cores():
    """Under pytest-xdist the workers share the cores: each worker, and every CLI run it starts, computes on
    cores // workers threads, so two workers' trainings do not oversubscribe a 2-core machine."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        yield
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    patch, before = pytest.MonkeyPatch(), torch.get_num_threads()
    patch.setenv("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)
    patch.undo()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python -m edgecnn ARGS` in a fresh process and capture its output."""
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout)


def once_per_session(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder that `make` fills once per test session; under pytest-xdist the first worker to ask makes it and
    the others wait for it (tests only read it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():  # not made yet, or a worker failed to make it: (re)make it
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def _run_quickstart(folder: Path) -> None:
    proc = run_cli("compress", str(QUICKSTART), "--out", str(folder / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The full quickstart recipe, run once per session (about a minute on 2 cores)."""
    return once_per_session(tmp_path_factory, "quickstart", _run_quickstart) / "run"


@pytest.fixture(scope="session")
def quickstart_report(quickstart_run) -> dict:
    return json.loads((quickstart_run / "report.json").read_text())


SHARED_MODELS = SHARED / "models"
CIFAR_ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"


def shared_teacher_options() -> list[str]:
    """The distill command's options naming the shared ResNet-56 (file.py:Class, its kwargs and weights)."""
    return ["--teacher", f"{SHARED_MODELS / 'cifar_resnet.py'}:CifarResNet", "--teacher-kwargs", "{depth: 56}",
            "--teacher-weights", str(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")]


def briefly_trained(task_name: str, model_name: str, data, out: Path) -> tuple:
    """A zoo model of `task_name` after one epoch of steps on labels (outputs that follow the images), exported to
    ONNX at out/model.onnx: (task, model, head, onnx path)."""
    import torch

    from edgecnn.compression.export import export_onnx
    from edgecnn.models.files import ModelInfo, build_model
    from edgecnn.tasks.registry import get_task

    task = get_task(task_name)
    torch.manual_seed(0)
    model = build_model(ModelInfo(model_name, {}, data.num_classes, data.input_shape))
    head = task.head_spec(model, data)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for x, y in task.batches(data, data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)):
        opt.zero_grad()
        task.loss(model(data.normalize(x)), y, head).backward()
        opt.step()
    export_onnx(model.eval(), data.input_shape, out / "model.onnx")
    return task, model, head, out / "model.onnx"


def needs_shared(*paths: Path) -> None:
    """Skip the calling test when ../shared (the user's models and data) is not on this machine."""
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} is absent: this test needs the shared models/data folder next to the repository")


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """A real CIFAR-10 image folder: the first 40 train and 30 test JPEGs per class of the shared archive."""
    needs_shared(CIFAR_ARCHIVE)
    return once_per_session(tmp_path_factory, "cifar_small", _extract_cifar_small) / "cifar10"


def _extract_cifar_small(root: Path) -> None:
    import tarfile

    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4:
                continue
            split, cls = parts[1], parts[2]
            if counts.get((split, cls), 0) < (40 if split == "train" else 30):
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                tar.extract(m, root, filter="data")


# ---- a real OpenSSH server on 127.0.0.1 (deploy tests) ---------------------------------------------


class SSHServer:
    """A throw-away sshd: its port, the client ssh_config that trusts it, and one that does not."""

    def __init__(self, folder: Path, port: int):
        import getpass

        self.folder, self.port, self.host = folder, port, "127.0.0.1"
        self.user = getpass.getuser()
        self.config = folder / "ssh_config"  # trusts the server's host key
        self.untrusting_config = folder / "ssh_config_unknown_host"  # empty known_hosts

    def profile(self, name: str, folder: Path, **fields) -> Path:
        """Write devices/<name>.yaml for this server into `folder` (the device's python: this one)."""
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        workdir = folder / f"{name}-workdir"
        workdir.mkdir(exist_ok=True)
        profile = {"transport": "ssh", "host": self.host, "port": self.port, "user": self.user,
                   "ssh_config": str(self.config), "python": sys.executable, "workdir": str(workdir),
                   "runtimes": ["onnxruntime", "litert"], "connect_timeout": 3, **fields}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(profile))
        return workdir


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (own host key, user key, config, authorized_keys); ~/.ssh is untouched."""
    import socket
    import time

    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).is_file() or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    try:  # sshd's privilege-separation directory (as root)
        Path("/run/sshd").mkdir(exist_ok=True)
    except OSError:
        pass
    server = SSHServer(d, port)
    host_key = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (d / "known_hosts_empty").write_text("")
    for cfg, known in ((server.config, "known_hosts"), (server.untrusting_config, "known_hosts_empty")):
        cfg.write_text(
            f"Host *\n  User {server.user}\n  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d / known}\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )
    log = open(d / "sshd.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    if proc.poll() is not None:
        log.close()
        pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def one_thread():
    """Short trainings of small convs: one intra-op thread avoids spinning on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
