"""CLI surface: help with examples, and issue 2's bad-input cases (exit 2, one error line)."""

from __future__ import annotations

import pytest
from conftest import QUICKSTART, run_cli

COMMANDS = ["compress", "train", "distill", "prune", "quantize", "export", "bench", "deploy", "compare", "devices"]


def test_top_level_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in COMMANDS:
        assert cmd in proc.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_has_help_with_example(cmd):
    proc = run_cli(cmd, "--help")
    assert proc.returncode == 0
    assert "Example:" in proc.stdout and f"edgecnn {cmd}" in proc.stdout


def _assert_one_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def test_malformed_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndistill: {epochs: 3\n")
    _assert_one_error(run_cli("compress", str(bad), "--out", str(tmp_path / "o")), "bad.yaml", "YAML")


def test_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text() + "\ndistil: {epochs: 1}\n")
    _assert_one_error(run_cli("compress", str(bad), "--out", str(tmp_path / "o")), "distil", "unknown key")


def test_missing_file(tmp_path):
    _assert_one_error(run_cli("compress", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")


def test_missing_teacher_weights(tmp_path):
    proc = run_cli("compress", str(QUICKSTART), "--out", str(tmp_path / "o"), "--set", "teacher.weights=missing.pt")
    _assert_one_error(proc, "missing.pt")


def test_negative_epochs(tmp_path):
    proc = run_cli("compress", str(QUICKSTART), "--out", str(tmp_path / "o"), "--set", "distill.epochs=-1")
    _assert_one_error(proc, "distill.epochs")


def test_existing_run_dir_is_refused_without_resume(quickstart_run):
    before = sorted(p.name for p in quickstart_run.iterdir())
    _assert_one_error(run_cli("compress", str(QUICKSTART), "--out", str(quickstart_run)), "--resume")
    assert sorted(p.name for p in quickstart_run.iterdir()) == before


@pytest.mark.parametrize("text", ["", "# only a comment\n\n   # and another\n"])
def test_empty_or_all_comment_recipe_is_refused(tmp_path, text):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text(text)
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "o"))
    _assert_one_error(proc, "empty.yaml", "empty")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_no_validation_images_is_refused_before_training(tmp_path):
    proc = run_cli("compress", str(QUICKSTART), "--out", str(tmp_path / "o"), "--set", "data.val_fraction=0")
    _assert_one_error(proc, "data.val_fraction", "validation")
    assert not (tmp_path / "o").exists()
