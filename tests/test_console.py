"""Native libraries' output (written straight to fds 1 and 2) stays off the terminal; edgecnn's own output does not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys
    from edgecnn.core.console import {entry}
    {call}
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() are written to STDERR\\n")
    os.write(1, b"oneDNN custom operations are on\\n")
    print("table row")
    print("error: one line", file=sys.stderr)
    {after}
""")


def _run(tmp_path, entry: str, call: str, after: str = "", verbose: bool = False):
    env = {**os.environ, "EDGECNN_CACHE": str(tmp_path)}
    env.pop("EDGECNN_VERBOSE", None)
    if verbose:
        env["EDGECNN_VERBOSE"] = "1"
    code = SCRIPT.format(entry=entry, call=call, after=after)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_entry_point_sends_native_lines_to_the_log(tmp_path):
    proc = _run(tmp_path, "native_output_to_log_for_good", "native_output_to_log_for_good()",
                after="os.write(2, b'at exit\\n')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "table row\n"
    assert proc.stderr == "error: one line\n"
    log = (tmp_path / "native.log").read_text()
    assert "absl::InitializeLog" in log and "oneDNN" in log and "at exit" in log


def test_context_restores_the_terminal(tmp_path):
    proc = _run(tmp_path, "native_output_to_log", "cm = native_output_to_log(); cm.__enter__()",
                after="cm.__exit__(None, None, None); os.write(2, b'after\\n')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "error: one line\nafter\n"
    assert "absl::InitializeLog" in (tmp_path / "native.log").read_text()


def test_verbose_shows_everything(tmp_path):
    proc = _run(tmp_path, "native_output_to_log_for_good", "native_output_to_log_for_good()", verbose=True)
    assert "absl::InitializeLog" in proc.stderr and "oneDNN" in proc.stdout


LIBRARY = textwrap.dedent("""
    import logging, sys, warnings
    handler = logging.StreamHandler()  # like torch's own handler: bound to sys.stderr when the library loads
    log = logging.getLogger("somelib")
    log.addHandler(handler)
    log.propagate = False
    def chatter():
        log.warning("W1201 somelib.py:630] register_constant() on Enum subclasses is deprecated")
        print("Statistics collection 100%")
        warnings.warn("a library warning")
""")


def test_cli_routes_other_libraries_python_output_to_the_log(tmp_path):
    (tmp_path / "somelib.py").write_text(LIBRARY)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from edgecnn.core.console import native_output_to_log_for_good, route_python_noise, terminal
        route_python_noise()
        native_output_to_log_for_good()
        import somelib
        somelib.chatter()
        print("edgecnn's own line")
        terminal(err=True).write("error: one line\\n")
    """)
    env = {**os.environ, "EDGECNN_CACHE": str(tmp_path)}
    env.pop("EDGECNN_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "edgecnn's own line\n" and proc.stderr == "error: one line\n"
    log = (tmp_path / "native.log").read_text()
    assert "W1201" in log and "Statistics collection" in log and "a library warning" in log


def test_qat_keeps_torchao_import_chatter_off_the_terminal(tmp_path):
    """Importing torchao (or litert_torch) logs a torch deprecation warning ('W1201 ... _pytree.py:630]'); API users
    running QAT in their own process must not see it."""
    code = textwrap.dedent("""
        from edgecnn.compression.qat import train_qat
        from edgecnn.config.recipe import QatConfig
        from edgecnn.data.datasets import load_data
        from edgecnn.models.files import ModelInfo, build_model
        data = load_data("mnist5k", 0.1)
        data.train = data.train.head(64)
        model = build_model(ModelInfo("lenet_small", {}, 10, (1, 28, 28)))
        result = train_qat(model, data, QatConfig(enabled=True, epochs=1, batch_size=32), seed=0, augment="none")
        assert len(result.history) == 1
    """)
    env = {**os.environ, "EDGECNN_CACHE": str(tmp_path)}
    env.pop("EDGECNN_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout == "", (proc.stdout, proc.stderr)
