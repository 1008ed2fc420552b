"""Keep native libraries' log lines off the user's terminal, set up once at each entry point.

Converters and runtimes (TensorFlow Lite's converter, oneDNN, XNNPACK, absl) write straight to file
descriptors 1 and 2, bypassing Python: `WARNING: All log messages before absl::InitializeLog()...`,
`oneDNN custom operations are on...`, `INFO: Created TensorFlow Lite XNNPACK delegate`. While
`native_output_to_log()` is active those descriptors point at a log file, and Python's
`sys.stdout` / `sys.stderr` are re-opened on the terminal, so edgecnn's own output (tables, progress,
the one `error:` line) still reaches the user and nothing else does.

The CLI goes one step further (`native_output_to_log_for_good`): Python-level writes to
`sys.stdout` / `sys.stderr` reach the terminal only when they come from edgecnn, click (help,
usage) or the interpreter (a traceback); other libraries' writes (torch's own log handler, warnings,
tqdm or rich progress bars of NNCF, print() calls) go to the log. edgecnn's rich consoles write to
`terminal()` directly. The Python API leaves Python-level output to the caller.

`EDGECNN_VERBOSE=1` turns all of it off. The log is `$EDGECNN_CACHE/native.log` (default
`~/.cache/edgecnn/native.log`), appended to, and started afresh when it passes 8 MB.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

MAX_LOG_BYTES = 8 * 2**20
_active = 0


def verbose() -> bool:
    """True when the user asked to see every library's output (EDGECNN_VERBOSE set and not 0)."""
    return os.environ.get("EDGECNN_VERBOSE", "") not in ("", "0")


def native_log_path() -> Path:
    """Where native libraries' output goes."""
    return Path(os.environ.get("EDGECNN_CACHE") or Path.home() / ".cache" / "edgecnn") / "native.log"


def _open_log() -> int:
    path = native_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
            path.unlink()
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # a read-only home: drop the output instead
        return os.open(os.devnull, os.O_WRONLY)


def _terminal_stream(stream, fd: int):
    """A text stream like `stream` that writes to `fd` (a copy of the terminal's descriptor)."""
    return io.TextIOWrapper(
        os.fdopen(fd, "wb", buffering=0, closefd=False),
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def _is_fd_stream(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # a notebook's stream has no descriptor
        return False


def _redirect() -> tuple[dict[int, int], int, tuple]:
    """Point fds 1 and 2 at the log; Python's streams move to copies of the terminal's descriptors."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log = _open_log()
    streams = sys.stdout, sys.stderr
    sys.stdout = _terminal_stream(sys.stdout, saved[1]) if _is_fd_stream(sys.stdout, 1) else sys.stdout
    sys.stderr = _terminal_stream(sys.stderr, saved[2]) if _is_fd_stream(sys.stderr, 2) else sys.stderr
    os.dup2(log, 1)
    os.dup2(log, 2)
    return saved, log, streams


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
    """Point descriptors 1 and 2 at the native log while Python's streams keep the terminal (re-entrant)."""
    global _active
    if _active or verbose():
        _active += 1
        try:
            yield
        finally:
            _active -= 1
        return
    saved, log, streams = _redirect()
    _active = 1
    try:
        yield
    finally:
        _active = 0
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved[1], 1)
        os.dup2(saved[2], 2)
        sys.stdout, sys.stderr = streams
        for fd in (*saved.values(), log):
            os.close(fd)


def native_output_to_log_for_good() -> None:
    """The CLI's entry point: like native_output_to_log(), for the rest of the process, and Python-level
    output of other libraries routed to the log too (see the module docstring).

    Nothing is restored, so lines that native libraries print while the interpreter shuts down go to
    the log as well.
    """
    global _active
    if _active or verbose():
        return
    _redirect()
    _active = 1
    log = _LogFile()
    sys.stdout = _Router(sys.stdout, log)
    sys.stderr = _Router(sys.stderr, log)


OWN_MODULES = ("edgecnn", "click", "__main__")


def _from_own_code(depth: int) -> bool:
    """True when the write `depth` frames up comes from edgecnn, click or the interpreter itself."""
    try:
        frame = sys._getframe(depth)
    except ValueError:  # written from C with no Python caller: the interpreter's traceback
        return True
    return str(frame.f_globals.get("__name__", "")).startswith(OWN_MODULES)


class _Router(io.TextIOBase):
    """sys.stdout / sys.stderr of the CLI: edgecnn's writes to the terminal, other libraries' to the log."""

    def __init__(self, terminal, log):
        self.terminal, self._log = terminal, log

    def write(self, text: str) -> int:
        return (self.terminal if _from_own_code(2) else self._log).write(text)

    def flush(self) -> None:
        self.terminal.flush()

    def fileno(self) -> int:
        return self.terminal.fileno()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    @property
    def encoding(self):  # type: ignore[override]
        return self.terminal.encoding

    @property
    def buffer(self):
        return self.terminal.buffer


def terminal(err: bool = False):
    """The stream edgecnn's own consoles write to: the terminal, also while other output is routed away."""
    stream = sys.stderr if err else sys.stdout
    return stream.terminal if isinstance(stream, _Router) else stream


def route_python_noise() -> None:
    """CLI only: Python warnings and library log records go to the native log, not the terminal.

    Library loggers (torch, onnxscript, absl, litert_torch) write through logging's last-resort
    handler to sys.stderr; warnings print there too. Under EDGECNN_VERBOSE both stay as they are.
    """
    if verbose():
        return
    handler = logging.StreamHandler(_LogFile())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
    logging.captureWarnings(True)


class _LogFile(io.TextIOBase):
    """A text stream appending to the native log (opened per write: the CLI writes rarely)."""

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError), open(native_log_path(), "a", encoding="utf-8") as f:
            f.write(text)
        return len(text)


LIBRARY_LOGGERS = ("torch", "absl", "litert_torch", "onnxscript", "torchao")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Around a converter call: its Python-level chatter (print() progress lines, warnings, loggers
    below ERROR) goes to the native log too, whoever called it (the CLI, the API, a test)."""
    if verbose():
        yield
        return
    levels = {n: logging.getLogger(n).level for n in LIBRARY_LOGGERS}
    sink = _LogFile()
    try:
        for n in levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        with (
            native_output_to_log(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
