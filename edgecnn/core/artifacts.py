"""Atomic files, content hashes and stage manifests: the run directory's crash-safety mechanism.

Every file the pipeline writes goes through `atomic_path`/`atomic_write_*`: it is written under a
temporary name in the same folder and renamed into place, so it appears complete or not at all.
A stage's manifest is written last, only when every output is in place; a stage folder without a
manifest is unfinished and is wiped and redone by `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecnn.core.errors import UserError

MANIFEST = "manifest.json"
LOW_DISK_BYTES = 1 << 20  # below this much free space, a failed write is taken for a full disk


_counter = itertools.count()


def _temp_name(path: Path) -> Path:
    """A new, unused `.NAME.tmp-PID-N` beside `path`.

    The varying part has no dot, so libraries that name archive members after the file's stem
    (torch.save, torch.jit.save) write the same bytes whatever the temporary name was.
    """
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temp_name(path)
    try:
        yield tmp_path
        if tmp_path.is_dir():
            raise RuntimeError(f"{tmp_path} became a folder")
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """A stable hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's manifest, or None when the stage never finished (or its manifest is unreadable)."""
    try:
        return json.loads((stage_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def outputs_intact(stage_dir: Path, manifest: dict) -> bool:
    """True when every output the manifest lists exists inside the folder with the recorded hash."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return False
    for rel, digest in outputs.items():
        try:
            p = safe_join(stage_dir, rel)
        except UserError:
            return False
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return True


def write_manifest(stage_dir: Path, manifest: dict) -> dict:
    """Record a finished stage: hashes every file in the folder, then writes the manifest last; returns it."""
    outputs = {
        str(p.relative_to(stage_dir)): file_sha256(p)
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {**manifest, "outputs": outputs}
    atomic_write_json(stage_dir / MANIFEST, manifest)
    return manifest


def safe_join(root: Path, rel: str) -> Path:
    """`root / rel`, refusing any path that would land outside `root` (absolute, `..`, links)."""
    root = Path(root).resolve()
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise UserError(f"path {rel!r}: not a file name inside {root}")
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"path {rel!r} escapes {root}; use a plain name inside it")
    return target


def disk_full(path: str | os.PathLike) -> bool:
    """True when the file system holding `path` (or its nearest existing parent) is (nearly) full."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_DISK_BYTES or st.f_favail == 0


@contextlib.contextmanager
def disk_guard(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise any failure while writing under `path` as ENOSPC when that file system is full.

    Libraries report a full disk in their own ways (torch: RuntimeError "file write failed",
    protobuf/flatbuffers: their own errors); the CLI maps ENOSPC to one `error:` line.
    """
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            if e.filename is None:  # a failed write() names no file: name the run directory
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        if disk_full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    except Exception as e:
        if not isinstance(e, UserError) and disk_full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory (released by the kernel even on SIGKILL)."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir}: another edgecnn process is writing this run directory; wait for it or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete what killed runs leave behind: unfinished stage folders, replaced ones, temporary files."""
    removed = []
    for p in sorted(run_dir.glob(".*")):
        name = p.name
        if ".tmp-" in name or ".old-" in name or (name.endswith(".tmp") and p.is_file()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(name)
    return removed
