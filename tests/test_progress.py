"""Progress in a log: when stderr is not a terminal, long loops print throttled plain lines, no bar."""

from __future__ import annotations

import io

import pytest

from edgecnn.core import progress


@pytest.fixture
def log_stream(monkeypatch):
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress, "terminal", lambda err=False: stream)
    return stream


def test_a_log_gets_a_line_per_interval_and_none_for_the_last_step(log_stream, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    with progress.progress_bar("distill", total=3, unit="epoch") as bar:
        for i in range(3):
            bar.advance(f"loss {1.0 / (i + 1):.3f}")
    lines = log_stream.getvalue().splitlines()
    assert [line.rsplit(", ", 1)[0] for line in lines] == ["distill: 1/3 epoch, loss 1.000",
                                                          "distill: 2/3 epoch, loss 0.500"]
    assert all(line.rsplit(", ", 1)[1].endswith("s") for line in lines)  # the elapsed time, e.g. 0m00s


def test_short_loops_stay_silent_in_a_log(log_stream):
    with progress.progress_bar("prune", total=5, unit="epoch") as bar:
        for _ in range(5):
            bar.advance("loss 0.1")
    assert log_stream.getvalue() == ""
