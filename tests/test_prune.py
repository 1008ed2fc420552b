"""Pruning on real architectures: each pruned model runs, exports to ONNX and TFLite and matches
itself there; pruned files reload in a fresh process; targets and unreachable targets."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli

from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.pruning import ChannelPruner, kept_layers, latency_timer
from edgecnn.config.recipe import PruneConfig
from edgecnn.core.errors import UserError
from edgecnn.models.files import ModelInfo, build_model, count_macs_params, load_model_file, save_model
from edgecnn.pipeline.stages.prune import find_ratio
from edgecnn.runtime import agent
from edgecnn.tasks.registry import get_task

USER_MODEL = str(REPO / "tests" / "models" / "edge_blocks.py") + ":EdgeNet"
TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0",
               "regnet_x_400mf"]
SPECS = {**{a: (f"torchvision:{a}", {}) for a in TORCHVISION},
         "cifar_resnet56": (str(REPO.parent / "shared" / "models" / "cifar_resnet.py") + ":CifarResNet", {"depth": 56}),
         "cifar_resnet20": ("cifar_resnet20", {}),
         "edgenet": (USER_MODEL, {}),
         "edgenet_no_shuffle": (USER_MODEL, {"shuffle": False})}
SHAPE = (3, 64, 64)


def classifier(model) -> list[str]:
    """The classification task's kept layers of a 10-class model (what the prune stage keeps whole)."""
    return get_task("classification").kept_layers(model, {"kind": "logits", "num_classes": 10})


def pruned(name: str, ratio: float = 0.4, round_to: int | None = 8):
    """(info, unpruned copy, pruned model, pruner) of a named architecture, seeded."""
    spec, kwargs = SPECS[name]
    shape = (3, 32, 32) if name.startswith("cifar") else SHAPE
    if spec.startswith("/") and not (REPO.parent / "shared").is_dir():
        pytest.skip("needs ../shared/models")
    info = ModelInfo(spec, kwargs, 10, shape)
    torch.manual_seed(0)
    model = build_model(info).eval()
    with torch.no_grad():  # non-trivial BN statistics, so pruned channels matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 1.0)
    before = build_model(info).eval()
    before.load_state_dict(model.state_dict())
    example = torch.zeros(1, *shape)
    kept = kept_layers(model, [], classifier(model))
    pruner = ChannelPruner(model, example, ratio=ratio, round_to=round_to, ignored=kept)
    pruner.step()
    return info, before, model.eval(), pruner


@pytest.mark.parametrize("name", list(SPECS))
def test_pruned_model_runs_with_fewer_macs(name):
    info, before, model, pruner = pruned(name)
    macs0, params0 = count_macs_params(before, info.input_shape)
    macs1, params1 = count_macs_params(model, info.input_shape)
    assert macs1 < 0.85 * macs0 and params1 < params0, (macs0, macs1)
    with torch.no_grad():
        out = model(torch.randn(2, *info.input_shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.fc.out_features == 10 if hasattr(model, "fc") and hasattr(model.fc, "out_features") else True
    # a channel shuffle defeats Torch-Pruning's graph: those models fall back to block-wise pruning
    if name in ("shufflenet_v2_x1_0", "edgenet"):
        assert pruner.mode == "blocks"
    elif name != "edgenet_no_shuffle":  # (its grouped conv inside a concatenation may need the fallback too)
        assert pruner.mode == "graph"


def test_shufflenet_keeps_the_shuffled_trunk_and_prunes_inside_branches():
    _, before, model, _ = pruned("shufflenet_v2_x1_0")
    for b0, b1 in zip(before.stage3, model.stage3, strict=True):
        assert b1.branch2[0].out_channels < b0.branch2[0].out_channels  # inside the branch: pruned
        assert b1.branch2[5].out_channels == b0.branch2[5].out_channels  # into the shuffle: whole
        assert b1.branch2[0].out_channels % 8 == 0


def grouped_convs_stay_divisible(model) -> bool:
    return all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
               for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_user_model_layers_stay_consistent():
    _, before, model, _ = pruned("edgenet_no_shuffle", ratio=0.5, round_to=None)
    assert grouped_convs_stay_divisible(model)
    assert model.res1.dw[0].groups == model.res1.dw[0].out_channels < before.res1.dw[0].out_channels  # depthwise
    assert model.res1.se.fc2.out_channels == model.res1.dw[0].out_channels  # SE follows its block
    assert model.mix.b[1][0].in_channels < before.mix.b[1][0].in_channels  # grouped conv inside a concat


def export_and_compare(name: str, tmp_path, formats=("onnx", "tflite")) -> None:
    info, _, model, _ = pruned(name)
    x = torch.randn(3, *info.input_shape)
    with torch.no_grad():
        ref = model(x).numpy()
    for fmt in formats:
        path = tmp_path / f"{name}.{fmt}"
        (export_onnx if fmt == "onnx" else export_tflite)(model, info.input_shape, path)
        rt = agent.open_runtime(str(path), 1)
        got = np.concatenate([rt.run(x[i : i + 1].numpy()) for i in range(len(x))])
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), (fmt, np.abs(got - ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_pruned_model_matches_itself_in_onnxruntime_and_litert(tmp_path):
    export_and_compare("edgenet", tmp_path)  # residual, concat, grouped, depthwise, SE and a shuffle in one


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SPECS if n != "edgenet"])
def test_every_pruned_architecture_matches_itself_when_exported(name, tmp_path):
    export_and_compare(name, tmp_path)


def test_pruned_file_reloads_in_a_fresh_process(tmp_path):
    info, before, model, _ = pruned("edgenet")
    path = tmp_path / "pruned.pt"
    save_model(model, info, path)
    x = torch.randn(2, *info.input_shape)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", model(x).numpy())
    with pytest.raises(RuntimeError, match="size mismatch"):  # the classic failure this file format avoids
        before.load_state_dict(model.state_dict())
    code = (
        "import sys, json, numpy as np, torch\nfrom pathlib import Path\n"
        "from edgecnn.models.files import load_model_file\n"
        "m, info = load_model_file(Path(sys.argv[1]))\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad(): out = m(x).numpy()\n"
        "print(json.dumps({'diff': float(np.abs(out - np.load(sys.argv[3])).max()), 'spec': info.spec}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"), str(tmp_path / "ref.npy")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["diff"] == 0.0 and result["spec"] == USER_MODEL


def test_targets_are_met_by_searching_the_ratio():
    info = ModelInfo("cifar_resnet20", {}, 10, (3, 32, 32))
    model, x = build_model(info).eval(), torch.zeros(1, 3, 32, 32)
    macs0, params0 = count_macs_params(model, info.input_shape)
    cfg = PruneConfig(macs_reduction=2)
    ratio, log = find_ratio(model, cfg, x, classifier(model))
    pruner = ChannelPruner(model, x, ratio=ratio, ignored=kept_layers(model, [], classifier(model)))
    pruner.step()
    macs1 = count_macs_params(model, info.input_shape)[0]
    assert macs0 / macs1 >= 2 and macs0 / macs1 < 2.4 and log["target"] == "macs_reduction"
    lenet = ModelInfo("lenet", {}, 10, (1, 28, 28))
    with pytest.raises(UserError, match=r"smallest reachable value is [\d,]+ parameters"):
        find_ratio(build_model(lenet), PruneConfig(params_budget=10), torch.zeros(1, 1, 28, 28), ["fc"])


def test_latency_budget_is_timed_while_searching():
    """The search times each pruned copy with the timer it is given (here a deterministic MAC-based one:
    real batch-1 timings on a shared host drift by 20% between calls, which is for benchmarks/ to show)."""
    info = ModelInfo("cifar_resnet20", {}, 10, (3, 32, 32))
    model, x = build_model(info).eval(), torch.zeros(1, 3, 32, 32)
    timed = []

    def timer(m, example):
        timed.append(m)
        return count_macs_params(m, info.input_shape)[0] / 1e7

    base = timer(model, x)
    cfg = PruneConfig(latency_budget_ms=0.5 * base)
    ratio, log = find_ratio(model, cfg, x, classifier(model), timer=timer)
    assert 0 < ratio < 0.95 and log["target"] == "latency_budget_ms"
    assert len(timed) == 1 + len(log["tried"]) and all(m is not model for m in timed[2:])
    assert any(t["value"] <= cfg.latency_budget_ms and t["ratio"] == round(ratio, 4) for t in log["tried"])
    assert all(t["value"] > cfg.latency_budget_ms for t in log["tried"] if t["ratio"] < ratio)


def test_latency_timer_times_a_forward_on_the_local_device():
    model, x = build_model(ModelInfo("cifar_resnet20", {}, 10, (3, 32, 32))).eval(), torch.zeros(1, 3, 32, 32)
    threads = torch.get_num_threads()
    p50 = latency_timer(1, "local-cpu")(model, x)
    assert 0.01 < p50 < 1000 and torch.get_num_threads() == threads
    with pytest.raises(UserError, match="prune.latency_device"):
        latency_timer(1, "rpi4")


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune") / "lenet.pt"
    info = ModelInfo("lenet", {}, 10, (1, 28, 28), [0.1307], [0.3081])
    torch.manual_seed(0)
    save_model(build_model(info), info, path)
    return path


def test_cli_prunes_to_a_mac_target_and_the_file_reloads(lenet_file, tmp_path):
    out = tmp_path / "pruned.pt"
    proc = run_cli("prune", str(lenet_file), "--data", "mnist5k", "--macs-reduction", "2", "--epochs", "1",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "x), params" in proc.stdout and "torch p50" in proc.stdout
    model, info = load_model_file(out)
    macs0 = count_macs_params(load_model_file(lenet_file)[0], info.input_shape)[0]
    assert macs0 / count_macs_params(model, info.input_shape)[0] >= 2


def test_cli_unreachable_target_is_one_error_line(lenet_file, tmp_path):
    field = "prune.latency_budget_ms"
    proc = run_cli("prune", str(lenet_file), "--data", "mnist5k", "--latency-budget-ms", "0.00001", "--epochs", "0",
                   "--out", str(tmp_path / "x.pt"))
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {field}")
    assert re.search(r"smallest reachable value is [\d.]+ ms p50 on local-cpu$", errors[0])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_an_overshot_target_is_said_in_the_result_and_the_run_notes(tmp_path, monkeypatch):
    """macs_reduction 1.2 with round_to 4 on LeNet-small: channels go in fours, so the nearest step overshoots."""
    from edgecnn.analysis.report import build_report
    from edgecnn.config.recipe import recipe_from_dict
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.prune import PruneStage
    from edgecnn.pipeline.stages.teacher import TeacherStage

    monkeypatch.setenv("EDGECNN_CPU_LEASES", str(tmp_path / "leases"))
    recipe = recipe_from_dict({
        "name": "overshoot", "data": {"spec": "mnist5k", "eval_samples": 200}, "teacher": {"model": "lenet_small"},
        "train": {"epochs": 0}, "student": None, "distill": None,
        "prune": {"ratio": None, "macs_reduction": 1.2, "round_to": 4, "epochs": 0},
    }, tmp_path)
    ctx = Context(recipe, tmp_path / "run")
    status = run_stages([TeacherStage(), PruneStage()], ctx, resume=False)
    r = ctx.results["prune"]
    t = r["target"]
    assert t["name"] == "macs_reduction" and t["goal"] == 1.2
    assert t["reached"] == pytest.approx(r["macs_reduction"]) and t["off"] > 0.10
    assert t["note"].startswith(f"prune.macs_reduction: asked for 1.20x fewer MACs, reached {t['reached']:.2f}x")
    assert "multiples of 4 (prune.round_to: 4)" in t["note"] and r["notes"] == [t["note"]]
    report = build_report({}, ctx.results, status, {})
    assert report["notes"] == [f"prune: {t['note']}"]


def test_a_target_met_closely_has_no_note():
    from edgecnn.pipeline.stages.prune import target_result

    model = build_model(ModelInfo("lenet", {}, 10, (1, 28, 28)))
    cfg = PruneConfig(ratio=None, params_budget=10_000)
    assert target_result(cfg, None, 9_500, model, lambda v: v)["note"] is None
    over = target_result(cfg, {"ratio": 0.5, "tried": [{"ratio": 0.4, "value": 12_000}]}, 5_000, model, lambda v: v)
    assert "+50% past the target" in over["note"] and "0.4000, gives 12,000 parameters" in over["note"]


@pytest.mark.parametrize("target", [{"params_budget": 20_000}, {"macs_reduction": 2.5}])
def test_stepped_pruning_ends_within_the_target(target, tmp_path, monkeypatch):
    """Global pruning in several steps ranks channels again at each step and can end past the one-shot search;
    a last correction step brings it back within the target."""
    from edgecnn.config.recipe import recipe_from_dict
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.prune import PruneStage
    from edgecnn.pipeline.stages.teacher import TeacherStage

    monkeypatch.setenv("EDGECNN_CPU_LEASES", str(tmp_path / "leases"))
    recipe = recipe_from_dict({
        "name": "stepped", "data": {"spec": "mnist5k", "eval_samples": 200}, "teacher": {"model": "lenet"},
        "train": {"epochs": 0}, "student": None, "distill": None,
        "prune": {"ratio": None, **target, "global_pruning": True, "iterative_steps": 4, "epochs": 0},
    }, tmp_path)
    ctx = Context(recipe, tmp_path / "run")
    run_stages([TeacherStage(), PruneStage()], ctx, resume=False)
    r = ctx.results["prune"]
    if "params_budget" in target:
        assert r["params_after"] <= target["params_budget"]
    else:
        assert r["macs_reduction"] >= target["macs_reduction"]
    assert r["target"]["off"] >= 0 and len(r["steps"]) == 4


def test_ignored_layers_take_shell_patterns():
    """`layer3.*.conv2` keeps every matching layer whole; a pattern or name matching nothing is a user error."""
    model = build_model(ModelInfo("cifar_resnet20", {}, 10, (3, 32, 32)))
    modules = dict(model.named_modules())
    kept = kept_layers(model, ["conv1", "layer3.*.conv2"], classifier(model))
    names = {n for n, m in modules.items() if any(m is k for k in kept)}
    assert names == {"conv1", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2", *classifier(model)}
    for bad in ("layer9.*", "layer3.0.conv9"):
        with pytest.raises(UserError, match=f"prune.ignored_layers: no layer (matches|named) '{re.escape(bad)}'"):
            kept_layers(model, [bad], [])


def test_cli_keeps_layers_matching_a_pattern(lenet_file, tmp_path):
    """`--keep 'fc*'` keeps fc1 and fc2 whole; a pattern matching no layer is one error line, nothing written."""
    out = tmp_path / "pruned.pt"
    proc = run_cli("prune", str(lenet_file), "--data", "mnist5k", "--ratio", "0.5", "--keep", "fc*", "--epochs", "0",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, _ = load_model_file(out)
    assert model.fc1.out_features == 120 and model.fc2.out_features == 84 and model.conv2.out_channels < 16
    proc = run_cli("prune", str(lenet_file), "--data", "mnist5k", "--keep", "layer9.*", "--epochs", "0",
                   "--out", str(tmp_path / "x.pt"))
    errors = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: prune.ignored_layers: no layer matches 'layer9.*'")
    assert not (tmp_path / "x.pt").exists() and "Traceback" not in proc.stderr
