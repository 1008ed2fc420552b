"""Untrusted files: checkpoints that would run code when unpickled are refused wherever a checkpoint is read,
and names from recipes or manifests cannot reach outside the run directory."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.core.artifacts import outputs_intact, safe_join
from edgecnn.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs `touch MARKER` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile(folder: Path, how: str) -> tuple[Path, Path]:
    """A checkpoint that executes code on load: torch.save's zip format or a plain pickle; and its marker."""
    marker = folder / "EXECUTED"
    path = folder / "weights.pt"
    if how == "torch":
        torch.save({"state_dict": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path, marker


def test_payload_really_executes_when_unpickled(tmp_path):
    """The control: the file does run its command under a plain (unsafe) load."""
    path, marker = hostile(tmp_path, "torch")
    torch.load(path, weights_only=False)
    assert marker.exists()


USES = ["teacher.weights", "teacher.model", "student.weights", "bench", "bench.weights", "prune", "export",
        "quantize", "distill.teacher"]


@pytest.mark.parametrize("how", ["torch", "pickle"])
@pytest.mark.parametrize("use", USES)
def test_code_executing_checkpoint_refused(use, how, tmp_path):
    path, marker = hostile(tmp_path, how)
    run = tmp_path / "run"
    if use.startswith(("teacher.", "student.")):
        recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
        section, key = use.split(".")
        recipe[section] = {"model": "lenet_small", key: str(path)} if key == "weights" else {"model": str(path)}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        args = ["compress", str(tmp_path / "r.yaml"), "--out", str(run)]
    elif use == "bench.weights":
        args = ["bench", "torchvision:resnet18", "--weights", str(path)]
    elif use == "distill.teacher":
        args = ["distill", "--teacher", str(path), "--epochs", "0", "--out", str(run / "s.pt")]
    else:
        args = [use, str(path), "--out", str(run / "out.pt")] if use != "bench" else ["bench", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and path.name in errors[0], result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == errors, "more than one line on stderr"
    if how == "torch":
        assert "posix.system" in errors[0], "the error should name what the checkpoint tried to load"
    assert "Traceback" not in result.output
    assert not marker.exists(), "the checkpoint's code ran"
    assert not run.exists(), "a refused input must not create the run directory"


@pytest.mark.parametrize("rel", ["../outside", "/etc/passwd", "a/../../b", "", "x\0y"])
def test_names_cannot_escape_the_run_dir(tmp_path, rel):
    with pytest.raises(UserError):
        safe_join(tmp_path / "run", rel)


def test_symlink_out_of_the_run_dir_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret").write_text("outside")
    (run / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UserError):
        safe_join(run, "link")
    assert safe_join(run, "stage/model.onnx") == (run / "stage" / "model.onnx").resolve()


def test_manifest_naming_outside_files_is_not_trusted(tmp_path):
    """A tampered manifest listing a path outside its stage folder makes the stage unfinished (redone)."""
    stage = tmp_path / "run" / "export"
    stage.mkdir(parents=True)
    (tmp_path / "run" / "report.json").write_text("{}")
    from edgecnn.core.artifacts import file_sha256

    digest = file_sha256(tmp_path / "run" / "report.json")
    assert not outputs_intact(stage, {"outputs": {"../report.json": digest}})
    assert not outputs_intact(stage, {"outputs": "not a mapping"})


@pytest.mark.parametrize("name", ["../../escape", "/abs", ".hidden", "a/b"])
def test_recipe_name_cannot_escape(tmp_path, name):
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe["name"] = name
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(main, ["compress", str(tmp_path / "r.yaml")])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2 and result.stderr.startswith("error:") and "name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_yaml_tags_do_not_construct_objects(tmp_path):
    marker = tmp_path / "EXECUTED"
    (tmp_path / "r.yaml").write_text(f"name: x\ncmd: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(main, ["compress", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "r.yaml" in result.stderr
    assert not marker.exists()
    json.dumps(result.stderr)  # one printable line


@pytest.mark.parametrize("rel", ["../../../etc/passwd", "/etc/passwd"])
def test_deploy_refuses_report_paths_outside_the_run(tmp_path, rel):
    """A tampered report.json cannot make deploy read (and ship to a device) a file outside the run."""
    run = tmp_path / "run"
    (run / "bench").mkdir(parents=True)
    (run / "bench" / "eval.npz").write_bytes(b"evaluation images")
    report = {"recipe": {"bench": {"device": "local-cpu"}},
              "models": [{"name": "student-pruned", "format": "onnx", "precision": "fp32", "path": rel,
                          "device": "local-cpu"}]}
    (run / "report.json").write_text(json.dumps(report))
    before = (run / "report.json").read_bytes()
    result = CliRunner().invoke(main, ["deploy", str(run), "--device", "local-cpu"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "outside the run directory" in errors[0], result.stderr
    assert (run / "report.json").read_bytes() == before
