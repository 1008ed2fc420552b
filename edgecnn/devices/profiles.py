"""Device profiles (YAML in `devices/`) and the transports that reach them.

A device is data plus one transport: `local` (a process on this machine), `ssh` (the system
OpenSSH client, so ~/.ssh/config, keys and ProxyJump work) or `emulated` (an ARM64 userland run
by qemu-user on this machine). Every transport offers the same four steps the deploy needs: make
a fresh work directory, copy files into it, run a command there, remove it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecnn.core.errors import UserError
from edgecnn.runtime.agent import FORMAT_RUNTIMES

LOCAL_DEVICES = ("local-cpu", "local-gpu")  # the devices of this machine, where `compress` benchmarks and times
RPI_EMU_BUILDER = "devices/build_rpi_emu.sh"
SSH_CONNECT_ERRORS = (
    "connection refused",
    "connection timed out",
    "no route to host",
    "network is unreachable",
    "could not resolve hostname",
    "connection closed",
    "connection reset",
    "operation timed out",
)


class DeviceProfile(BaseModel):
    """One device: how to reach it, which interpreter and runtimes to use there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/\[\]-]{0,127}$")
    description: str = ""
    transport: Literal["local", "ssh", "emulated"] = "local"
    host: str | None = None
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    ssh_config: str | None = Field(None, description="an ssh_config file (-F); default: ~/.ssh/config")
    connect_timeout: int = Field(5, ge=1, le=300)
    python: str = "python3"
    runtimes: list[str] = Field(default_factory=lambda: ["tflite-runtime", "litert", "onnxruntime", "openvino"])
    threads: int = Field(1, ge=0, le=256, description="0: all cores")
    workdir: str = "/tmp"
    root: str | None = Field(None, description="emulated: the ARM64 userland")
    cpu: str = "cortex-a72"
    emulated: bool = False
    requires_cuda: bool = False
    source: str | None = None

    def formats(self) -> list[str]:
        """The model formats this device can run, in the order of its preferred runtimes."""
        out = []
        for rt in self.runtimes:
            for fmt, rts in FORMAT_RUNTIMES.items():
                if rt in rts and fmt not in out:
                    out.append(fmt)
        return out

    def target(self) -> str:
        """Where the device is, in words."""
        if self.transport == "ssh":
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"
        if self.transport == "emulated":
            return f"qemu-aarch64 -cpu {self.cpu}, {self.root}"
        return "this machine"


BUILTIN = {
    "local-cpu": {
        "description": "this machine's CPU",
        "runtimes": ["onnxruntime", "litert", "openvino", "torch"],
        "python": sys.executable,
    },
    "local-gpu": {
        "description": "this machine's CUDA GPU",
        "runtimes": ["torch-cuda", "onnxruntime-cuda"],
        "python": sys.executable,
        "requires_cuda": True,
    },
    "rpi-emu": {
        "description": "ARM64 Debian userland under qemu-user (Cortex-A72); latencies are emulated",
        "transport": "emulated",
        "root": "~/.cache/edgecnn/rpi-emu",
        "python": "/usr/bin/python3.11",
        "runtimes": ["tflite-runtime", "onnxruntime", "litert", "openvino"],
        "emulated": True,
    },
}


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, first match wins: $EDGECNN_DEVICES, ./devices, the repo's devices/."""
    dirs = [Path(p).expanduser() for p in os.environ.get("EDGECNN_DEVICES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "devices", Path(__file__).resolve().parents[2] / "devices"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def _load_profile_file(path: Path) -> DeviceProfile:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the device profile ({e.__class__.__name__}); fix the YAML") from None
    if not isinstance(raw, dict):
        raw = {}
    raw.setdefault("name", path.stem)
    if raw["name"] in BUILTIN:
        raw = {**BUILTIN[raw["name"]], **raw}
    if raw.get("python") == "sys.executable":
        raw["python"] = sys.executable
    try:
        return DeviceProfile(**raw, source=str(path))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "profile"
        raise UserError(f"{path}: {field}: {err['msg']}; fix the device profile") from None


def list_profiles() -> list[DeviceProfile]:
    """Every known profile: the built-in local ones, then devices/*.yaml (a file overrides a built-in)."""
    found: dict[str, DeviceProfile] = {}
    for d in reversed(profile_dirs()):
        for path in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            p = _load_profile_file(path)
            found[p.name] = p
    builtins = {n: DeviceProfile(name=n, **kw) for n, kw in BUILTIN.items() if n not in found}
    return list({**builtins, **found}.values())


def parse_ssh_url(url: str) -> DeviceProfile:
    """`ssh://[user@]host[:port]` as an ad-hoc profile."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"--device {url!r}: bad port; use ssh://[user@]host[:port]") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise UserError(f"--device {url!r}: expected ssh://[user@]host[:port], e.g. ssh://pi@raspberrypi.local")
    return DeviceProfile(name=url, transport="ssh", host=parts.hostname, user=parts.username, port=port)


def get_profile(name: str) -> DeviceProfile:
    """The profile for a device name or an ssh:// URL; an unknown name is a UserError listing the known ones."""
    if name.startswith("ssh://"):
        return parse_ssh_url(name)
    profiles = {p.name: p for p in list_profiles()}
    if name not in profiles:
        raise UserError(
            f"--device {name!r}: unknown device; use one of {', '.join(sorted(profiles))}, "
            "ssh://[user@]host[:port], or add devices/<name>.yaml"
        )
    return profiles[name]


# ---- transports ------------------------------------------------------------------------------------


class Transport:
    """Make a work directory on the device, copy files there, run commands there, remove it."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile

    def python_argv(self) -> list[str]:
        return [self.profile.python]

    def mkdtemp(self) -> str:
        base = Path(self.profile.workdir).expanduser()
        base.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="edgecnn.", dir=base)

    def put(self, files: list[Path], remote_dir: str) -> None:
        for f in files:
            shutil.copy(f, Path(remote_dir) / f.name)

    def run(self, argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise UserError(
                f"device {self.profile.name}: {e.filename} not found; fix `python:` in its profile"
            ) from None

    def remove(self, remote_dir: str) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)

    def probe(self) -> str | None:
        """None when the device can run the agent's interpreter, else why not."""
        if self.profile.requires_cuda:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
        return None


class EmulatedTransport(Transport):
    """The ARM64 userland under qemu-user; files live on this machine, the interpreter is emulated."""

    @property
    def root(self) -> Path:
        return Path(self.profile.root or BUILTIN["rpi-emu"]["root"]).expanduser()

    def qemu(self) -> str | None:
        return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")

    def python_argv(self) -> list[str]:
        qemu, root = self.qemu(), self.root
        if qemu is None:
            raise UserError(
                f"device {self.profile.name}: qemu-aarch64-static not found; install it "
                "(apt-get install qemu-user-static)"
            )
        if not (root / ".complete").is_file():
            raise UserError(
                f"device {self.profile.name}: the ARM64 userland {root} is not built; "
                f"run `bash {RPI_EMU_BUILDER}` (downloads Debian arm64 packages and aarch64 wheels once)"
            )
        return [qemu, "-cpu", self.profile.cpu, "-L", str(root), str(root) + self.profile.python]

    def probe(self) -> str | None:
        try:
            argv = self.python_argv()
        except UserError as e:
            return str(e).split(": ", 1)[1]
        proc = subprocess.run(argv + ["-c", "import numpy"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return f"the emulated python fails ({(proc.stderr.strip().splitlines() or ['?'])[-1][:120]})"
        return None


@dataclass
class SSHError:
    kind: Literal["host-key", "unreachable", "auth", "no-sftp", "other"]
    message: str


class NoSFTPServer(UserError):
    """The device's sshd has no SFTP subsystem, which scp uses by default since OpenSSH 9."""


class SSHTransport(Transport):
    """The system OpenSSH client: BatchMode, strict host keys, a connect timeout, one retry."""

    def dest(self) -> str:
        p = self.profile
        return f"{p.user}@{p.host}" if p.user else str(p.host)

    def options(self) -> list[str]:
        p = self.profile
        opts = []
        config = p.ssh_config or os.environ.get("EDGECNN_SSH_CONFIG")
        if config:
            opts += ["-F", str(Path(config).expanduser())]
        opts += [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={p.connect_timeout}",
        ]
        return opts

    def _classify(self, stderr: str) -> SSHError:
        low = stderr.lower()
        if "subsystem request failed" in low:
            return SSHError("no-sftp", stderr)
        if "host key verification failed" in low or "remote host identification has changed" in low:
            return SSHError("host-key", stderr)
        if "permission denied" in low:
            return SSHError("auth", stderr)
        if any(s in low for s in SSH_CONNECT_ERRORS):
            return SSHError("unreachable", stderr)
        return SSHError("other", stderr)

    def _fail(self, err: SSHError) -> UserError:
        p = self.profile
        where = f"{self.dest()}:{p.port or 22}"
        last = (err.message.strip().splitlines() or ["no output"])[-1][:200]
        if err.kind == "host-key":
            keyscan = f"ssh-keyscan {'-p ' + str(p.port) + ' ' if p.port else ''}{shlex.quote(str(p.host))}"
            return UserError(
                f"device {p.name}: host {where} has an unknown or changed host key; check its fingerprint, then "
                f"trust it with `{keyscan} >> ~/.ssh/known_hosts`"
            )
        if err.kind == "auth":
            return UserError(
                f"device {p.name}: {where} refused the login ({last}); set up key login (ssh-copy-id) and the user"
            )
        if err.kind == "no-sftp":
            return NoSFTPServer(f"device {p.name}: {where} has no SFTP server for scp ({last})")
        if err.kind == "unreachable":
            return UserError(
                f"device {p.name}: cannot connect to {where} ({last}); check the host, port and that sshd runs"
            )
        return UserError(f"device {p.name}: ssh to {where} failed ({last})")

    def _ssh(self, remote: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on the device (every argument shell-quoted); retry once on connection failure."""
        p = self.profile
        argv = ["ssh", *self.options(), *(["-p", str(p.port)] if p.port else []), self.dest(), "--", shlex.join(remote)]
        return self._with_retry(argv, timeout, check)

    def _with_retry(self, argv: list[str], timeout: float, check: bool) -> subprocess.CompletedProcess:
        for attempt in (1, 2):
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            except FileNotFoundError:
                raise UserError(f"device {self.profile.name}: {argv[0]} not found; install openssh-client") from None
            except subprocess.TimeoutExpired:
                raise UserError(f"device {self.profile.name}: `{argv[0]}` took over {timeout:.0f} s") from None
            if proc.returncode != 255:
                break
            err = self._classify(proc.stderr)
            if err.kind != "unreachable" or attempt == 2:
                raise self._fail(err)
            time.sleep(1)
        if check and proc.returncode != 0:
            raise UserError(
                f"device {self.profile.name}: `{shlex.join(argv[-1:])}` failed there "
                f"({(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1][:200]})"
            )
        return proc

    def mkdtemp(self) -> str:
        base = self.profile.workdir.rstrip("/") or "/tmp"
        out = self._ssh(["mktemp", "-d", f"{base}/edgecnn.XXXXXXXX"], timeout=60).stdout.strip()
        if not re.fullmatch(r"/[\w./-]+", out):
            raise UserError(f"device {self.profile.name}: mktemp gave an unexpected path {out[:80]!r}")
        return out

    def put(self, files: list[Path], remote_dir: str) -> None:
        p = self.profile
        argv = ["scp", *self.options(), *(["-P", str(p.port)] if p.port else [])]
        argv += [str(f) for f in files] + [f"{self.dest()}:{remote_dir}/"]
        try:
            self._with_retry(argv, timeout=600, check=True)
        except NoSFTPServer:  # a device without sftp-server: scp's classic protocol (-O) instead
            self._with_retry([argv[0], "-O", *argv[1:]], timeout=600, check=True)

    def run(self, argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
        # `cd DIR && exec PROGRAM ARGS...` with a leading ~/ of PROGRAM expanded there (every word is quoted)
        script = 'cd "$1" && p="$2" && shift 2 && case "$p" in "~/"*) p="$HOME/${p#??}";; esac && exec "$p" "$@"'
        return self._ssh(["sh", "-c", script, "sh", cwd, *argv], timeout=timeout, check=False)

    def remove(self, remote_dir: str) -> None:
        self._ssh(["rm", "-rf", "--", remote_dir], timeout=60, check=False)

    def probe(self) -> str | None:
        try:
            self._ssh(["true"], timeout=self.profile.connect_timeout * 2 + 10)
        except UserError as e:
            return str(e).split(": ", 1)[1]
        return None


def transport_for(profile: DeviceProfile) -> Transport:
    """The transport that reaches a profile's device."""
    return {"local": Transport, "ssh": SSHTransport, "emulated": EmulatedTransport}[profile.transport](profile)


def reachability(profile: DeviceProfile) -> str | None:
    """None when the device answers, else the reason it does not (for `edgecnn devices`)."""
    if profile.transport == "ssh" and not profile.host:
        return "no host: set `host:` in its profile"
    return transport_for(profile).probe()


def check_local_device(device: str, field: str) -> None:
    """Refuse a device that is not this machine's CPU or GPU where a recipe key (`field`) needs one."""
    if device not in LOCAL_DEVICES:
        raise UserError(
            f"{field}: {device!r} is not a local device; use local-cpu (or local-gpu), "
            "and `edgecnn deploy RUN --device NAME` for other devices"
        )
    if device == "local-gpu":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"{field}: local-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); use local-cpu"
            )
