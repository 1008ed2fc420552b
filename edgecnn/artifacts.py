"""Atomic files, content hashes and stage manifests: the run directory's crash-safety mechanism.

Every file the pipeline writes goes through `atomic_path`/`atomic_write_*`: it is written under a
temporary name in the same folder and renamed into place, so it appears complete or not at all.
A stage's manifest is written last, only when every output is in place; a stage folder without a
manifest is unfinished and is wiped and redone by `--resume`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
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
    """True when every output the manifest lists exists with the recorded hash."""
    for rel, digest in manifest.get("outputs", {}).items():
        p = stage_dir / rel
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return True


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    """Record a finished stage: hashes every file in the folder, then writes the manifest last."""
    outputs = {
        str(p.relative_to(stage_dir)): file_sha256(p)
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    atomic_write_json(stage_dir / MANIFEST, {**manifest, "outputs": outputs})


def reset_dir(stage_dir: Path) -> None:
    """Remove an unfinished stage's folder and make it anew, empty."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)


def safe_join(root: Path, rel: str) -> Path:
    """`root / rel`, refusing any path that would land outside `root` (absolute, `..`, links)."""
    root = root.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {rel!r} escapes {root}")
    return target
