"""The Python API: the README's example runs as written, gives the CLI's report, and fails with the CLI's lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import QUICKSTART, REPO

import edgecnn
from edgecnn.cli import main


def readme_example() -> str:
    """The ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> tuple[Path, str]:
    """The README example, run in a fresh process from a folder that has the repository's recipes."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "recipes").symlink_to(REPO / "recipes")
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "api-quickstart", proc.stdout


def test_readme_example_prints_every_model_the_best_and_the_gates(readme_run):
    run_dir, out = readme_run
    report = json.loads((run_dir / "report.json").read_text())
    lines = out.splitlines()
    for m in report["models"]:
        assert any(ln.startswith(f"{m['name']:<15} {m['format']:<8} {m['precision']:<5} "
                                 f"accuracy {m['accuracy']:.4f}") for ln in lines), m["name"]
    best = next(ln for ln in lines if ln.startswith("best within 40 KB:")).split()[4:]
    entry = next(m for m in report["models"] if m["path"] == best[3] and m["format"] == best[1])
    assert entry["size_bytes"] <= 40 * 1024
    assert entry["accuracy"] == max(m["accuracy"] for m in report["models"] if m["size_bytes"] <= 40 * 1024)
    assert "parity gate: True accuracy gate: True" in out
    quantized = json.loads((run_dir / "int8-again" / "quantize.json").read_text())
    assert quantized["files"]["onnx"]["file"] == "model.int8.onnx" and (run_dir / "int8-again" / "model.onnx").is_file()
    assert re.search(r"^error: .*api-quickstart: run directory exists; add --resume", out, re.M)


def _shape(report: dict) -> dict:
    """What must not depend on the road taken: stages, models and the fields of each model entry."""
    return {
        "keys": sorted(report),
        "stages": {name: st["status"] for name, st in report["stages"].items()},
        "models": [(m["name"], m["format"], m["precision"], m["device"], sorted(m)) for m in report["models"]],
    }


def test_api_run_reports_like_the_cli(readme_run, quickstart_run):
    """The API's run (shortened) and the CLI's quickstart run: the same stages, models and fields."""
    api_report = json.loads((readme_run[0] / "report.json").read_text())
    cli_report = json.loads((quickstart_run / "report.json").read_text())
    assert _shape(api_report) == _shape(cli_report)
    assert api_report["recipe"]["distill"]["epochs"] == 3 and api_report["recipe"]["quantize"]["select"] == "fixed"


def _cli_error(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, (result.stderr, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def test_user_error_is_the_cli_line(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"not a model")
    cases = [
        (lambda: edgecnn.compress(tmp_path / "nope.yaml"), ["compress", str(tmp_path / "nope.yaml")]),
        (lambda: edgecnn.compress(QUICKSTART, out=tmp_path / "o", overrides=["name.x=1"]),
         ["compress", str(QUICKSTART), "--out", str(tmp_path / "o"), "--set", "name.x=1"]),
        (lambda: edgecnn.compress(QUICKSTART, out=tmp_path / "o", overrides={"distill.epochs": -1}),
         ["compress", str(QUICKSTART), "--out", str(tmp_path / "o"), "--set", "distill.epochs=-1"]),
        (lambda: edgecnn.quantize(model, out=tmp_path / "q"), ["quantize", str(model), "--out", str(tmp_path / "q")]),
        (lambda: edgecnn.bench(tmp_path / "m.onnx"), ["bench", str(tmp_path / "m.onnx")]),
    ]
    for call, args in cases:
        with pytest.raises(edgecnn.UserError) as e:
            call()
        assert str(e.value) == _cli_error(*args)
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()


def test_a_bad_stage_option_names_the_option(tmp_path):
    from edgecnn.models.files import ModelInfo, build_model, save_model

    info = ModelInfo("lenet_small", {}, 10, (1, 28, 28), [0.1307], [0.3081])
    save_model(build_model(info), info, tmp_path / "m.pt")
    for call, option in ((lambda: edgecnn.quantize(tmp_path / "m.pt", out=tmp_path / "q", calib_samples=0),
                          "--calib-samples"),
                         (lambda: edgecnn.prune(tmp_path / "m.pt", out=tmp_path / "p.pt", steps=0), "--steps"),
                         (lambda: edgecnn.export(tmp_path / "m.pt", out=tmp_path / "e", formats="onnx,pb"),
                          "--format 'pb'")):
        with pytest.raises(edgecnn.UserError, match=f"^{re.escape(option)}"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_import_is_cheap_and_the_api_is_there():
    code = ("import sys, edgecnn; heavy = [m for m in ('torch', 'pydantic', 'edgecnn.api') if m in sys.modules]; "
            "print(heavy, callable(edgecnn.compress), edgecnn.UserError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["[]", "True", "edgecnn.core.errors"], out.stderr


def test_stages_are_made_per_run_and_hold_no_state():
    from edgecnn.pipeline.stages.registry import default_stages

    first, second = default_stages(), default_stages()
    assert [s.name for s in first] == ["teacher", "distill", "prune", "export", "quantize", "bench"]
    assert all(a is not b and vars(a) == {} for a, b in zip(first, second, strict=True))


def test_overrides_as_mapping_or_set_strings_give_one_recipe():
    from edgecnn.config.recipe import load_recipe

    as_map = load_recipe(QUICKSTART, {"distill.epochs": 2, "export.formats": ["onnx"], "data": "mnist5k"})
    as_set = load_recipe(QUICKSTART, ["distill.epochs=2", "export.formats=[onnx]", "data=mnist5k"])
    assert as_map == as_set and as_map.distill.epochs == 2
