"""Property-based fuzzing of everything edgecnn reads: recipes, `--set`, model files, data folders.

Every generated input is bad. For each the CLI (run in-process) must end with exit code 2 and
exactly one `error:` line naming the field or file, print no traceback, and leave an existing run
directory exactly as it was (every file's bytes and mtime, hidden leftovers included).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import pickle
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecnn.cli import main
from edgecnn.config.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


# ---- fixtures: real model files, a run directory to protect --------------------------------------------


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of real, loadable files: an edgecnn model, a state_dict, ONNX and TFLite exports."""
    from edgecnn.compression.export import export_onnx, export_tflite
    from edgecnn.models.files import ModelInfo, build_model, save_model

    d = tmp_path_factory.mktemp("real")
    info = ModelInfo("lenet_small", {}, 10, (1, 28, 28), [0.1307], [0.3081])
    torch.manual_seed(0)
    model = build_model(info).eval()
    save_model(model, info, d / "model.pt")
    torch.save(model.state_dict(), d / "sd.pt")
    export_onnx(model, info.input_shape, d / "model.onnx")
    export_tflite(model, info.input_shape, d / "model.tflite")
    return {k: (d / f).read_bytes() for k, f in
            [("pt", "model.pt"), ("sd", "sd.pt"), ("onnx", "model.onnx"), ("tflite", "model.tflite")]}


@pytest.fixture(scope="module")
def victim(tmp_path_factory, real_files) -> Path:
    """An existing run directory: a finished stage, a report, and what a killed run left behind."""
    run = tmp_path_factory.mktemp("victim") / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "model.pt").write_bytes(real_files["pt"])
    (run / "teacher" / "manifest.json").write_text(json.dumps({"stage": "teacher", "outputs": {}}))
    (run / "report.json").write_text(json.dumps({"models": []}))
    (run / ".distill.tmp-4242").mkdir()
    (run / ".distill.tmp-4242" / "partial.bin").write_bytes(b"half")
    return run


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Callable[[], Path]:
    """A new empty folder per generated case."""
    counter = itertools.count()
    root = tmp_path_factory.mktemp("cases")

    def new() -> Path:
        d = root / f"c{next(counter)}"
        d.mkdir()
        return d

    return new


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, bytes' hash and mtime."""
    state = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st_ = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            state[str(p.relative_to(root))] = (digest, st_.st_mtime_ns, st_.st_size)
    return state


def run_refused(args: list, token: str, victim: Path) -> str:
    """Invoke the CLI in-process; assert exit 2, one `error:` line naming `token`, no traceback, run intact."""
    before = tree_state(victim)
    result = CliRunner().invoke(main, [str(a) for a in args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    detail = f"args={args}\nexit={result.exit_code}\nexc={result.exception!r}\nstderr={result.stderr[-2000:]}"
    assert result.exit_code == 2, detail
    assert isinstance(result.exception, SystemExit), detail
    assert len(errors) == 1, detail
    assert "Traceback" not in result.output and "Traceback" not in result.stderr, detail
    assert token in errors[0], f"{token!r} not named\n{detail}"
    assert tree_state(victim) == before, f"run directory changed\n{detail}"
    return errors[0]


def compress_args(recipe: Path, victim: Path, *overrides: str) -> list:
    args = ["compress", recipe, "--out", victim, "--resume"]
    for o in overrides:
        args += ["--set", o]
    return args


# ---- recipes ------------------------------------------------------------------------------------------

# (dotted field, kind, low, low inclusive, high, high inclusive, optional)
NUMBERS = [
    ("seed", int, 0, True, 2**31 - 1, True, False),
    ("data.val_fraction", float, 0.0, True, 0.5, False, False),
    ("data.calib_samples", int, 1, True, 100_000, True, False),
    ("data.eval_samples", int, 1, True, None, True, True),
    ("train.epochs", int, 0, True, 10_000, True, False),
    ("train.batch_size", int, 1, True, 65_536, True, False),
    ("train.lr", float, 0.0, False, 10.0, True, False),
    ("train.weight_decay", float, 0.0, True, 1.0, True, False),
    ("distill.temperature", float, 0.0, False, 100.0, True, False),
    ("distill.alpha", float, 0.0, True, 1.0, True, False),
    ("distill.epochs", int, 0, True, 10_000, True, False),
    ("prune.ratio", float, 0.0, True, 1.0, False, True),
    ("prune.iterative_steps", int, 1, True, 100, True, False),
    ("prune.round_to", int, 1, True, 256, True, True),
    ("quantize.accuracy_budget", float, 0.0, True, 1.0, True, False),
    ("quantize.qat.epochs", int, 1, True, 1000, True, False),
    ("export.opset", int, 17, True, 23, True, False),
    ("export.min_agreement", float, 0.0, True, 1.0, True, False),
    ("bench.threads", int, 0, True, 256, True, False),
    ("bench.min_seconds", float, 0.0, True, 3600.0, True, False),
]
CHOICES = {
    "train.optimizer": ["sgd", "adamw"],
    "train.precision": ["auto", "fp32", "bf16", "fp16"],
    "data.augment": ["none", "cifar", "auto"],
    "distill.feature_loss": ["none", "attention", "hints"],
    "prune.importance": ["magnitude", "bn_scale", "taylor"],
    "quantize.select": ["auto", "fixed"],
    "quantize.onnx.method": ["minmax", "entropy", "percentile"],
    "quantize.tflite.io": ["int8", "float"],
    "quantize.openvino.preset": ["performance", "mixed"],
    "export.on_fail": ["error", "warn"],
}
SECTIONS = ["train", "distill", "prune", "quantize", "export", "bench", "teacher", "student"]
FLOAT_WORDS = {"inf", "infinity", "nan", "true", "false", "yes", "no", "on", "off", "y", "n", "t", "f"}


def out_of_range(kind, lo, lo_inc, hi, hi_inc):
    if kind is int:
        below = st.integers(max_value=lo - (1 if lo_inc else 0), min_value=lo - 10**12)
        above = st.integers(min_value=hi + (1 if hi_inc else 0), max_value=hi + 10**12) if hi is not None else below
    else:
        below = st.floats(max_value=lo, exclude_max=lo_inc, allow_nan=False, min_value=-1e300)
        above = st.floats(min_value=hi, exclude_min=hi_inc, allow_nan=False) if hi is not None else below
    return st.one_of(below, above)


not_a_number = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=4), st.integers(), min_size=1, max_size=2),
    st.text(string.ascii_letters + " -_", min_size=1, max_size=12).filter(lambda s: s.strip().lower() not in FLOAT_WORDS
                                                                          and s.strip()),
)


def set_path(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


@st.composite
def bad_field(draw):
    """(dotted field, value) that validation must refuse: wrong type, out of range, unknown choice or key."""
    kind = draw(st.sampled_from(["range", "type", "choice", "unknown", "section", "name"]))
    if kind == "range":
        field, typ, lo, lo_inc, hi, hi_inc, _ = draw(st.sampled_from(NUMBERS))
        return field, draw(out_of_range(typ, lo, lo_inc, hi, hi_inc)), field
    if kind == "type":
        field, typ, *_, optional = draw(st.sampled_from(NUMBERS))
        value = draw(not_a_number if optional else st.one_of(not_a_number, st.none()))
        if typ is int and draw(st.booleans()):
            value = draw(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not float(v).is_integer()))
        return field, value, field
    if kind == "choice":
        field = draw(st.sampled_from(sorted(CHOICES)))
        value = draw(st.text(min_size=0, max_size=10).filter(lambda s: s not in CHOICES[field]))
        return field, value, field
    if kind == "unknown":
        section = draw(st.sampled_from(["", *SECTIONS, "data"]))
        known = set(Recipe.model_fields) if not section else set(
            Recipe.model_fields[section].annotation.__args__[0].model_fields
            if hasattr(Recipe.model_fields[section].annotation, "__args__")
            else Recipe.model_fields[section].annotation.model_fields
        )
        key = draw(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda k: k not in known))
        field = f"{section}.{key}" if section else key
        return field, draw(st.integers(0, 5)), field
    if kind == "section":
        section = draw(st.sampled_from(SECTIONS))
        return section, draw(st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2),
                                       st.text(string.ascii_letters, min_size=1, max_size=6))), section
    bad_name = st.one_of(
        st.just(""), st.just("../escape"), st.just("/etc/passwd"), st.just(".hidden"), st.just("a" * 65),
        st.text(min_size=1, max_size=20).filter(lambda s: not (s[0].isalnum() and s.isascii()
                                                                and all(c.isalnum() or c in "_.-" for c in s))),
    )
    return "name", draw(bad_name), "name"


@st.composite
def bad_data_or_path(draw, scratch_dir: Path):
    """(dotted field, value, token) for data specs and file paths that do not exist or do not fit."""
    kind = draw(st.sampled_from(["spec", "missing_folder", "file_as_folder", "weights", "model_py", "zoo",
                                 "torchvision", "model_file", "mean", "std", "ignored", "device", "kwargs",
                                 "unknown_kwarg", "nonfinite"]))
    name = draw(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
    if kind == "spec":
        spec = draw(st.text(min_size=1, max_size=20).filter(
            lambda s: s != "mnist5k" and not s.startswith(("imagefolder:", "cifar10:")) and "\0" not in s))
        return "data.spec", spec, "data spec"
    if kind == "missing_folder":
        prefix = draw(st.sampled_from(["imagefolder:", "cifar10:"]))
        return "data.spec", f"{prefix}{scratch_dir / ('missing-' + name)}", f"missing-{name}"
    if kind == "file_as_folder":
        prefix = draw(st.sampled_from(["imagefolder:", "cifar10:"]))
        f = scratch_dir / f"plain-{name}.txt"
        f.write_text("not a folder")
        return "data.spec", f"{prefix}{f}", f.name
    if kind == "weights":
        return "teacher.weights", f"nowhere-{name}.pt", f"nowhere-{name}.pt"
    if kind == "model_py":
        return "teacher.model", f"nowhere-{name}.py:Net", f"nowhere-{name}.py"
    if kind == "zoo":
        return draw(st.sampled_from(["teacher.model", "student.model"])), f"nozoo_{name}", f"nozoo_{name}"
    if kind == "torchvision":
        return "teacher.model", f"torchvision:nomodel_{name}", f"nomodel_{name}"
    if kind == "model_file":
        return "teacher.model", f"missing-{name}.pt", f"missing-{name}.pt"
    if kind == "mean":
        return "data.mean", draw(st.lists(st.floats(0, 1), min_size=2, max_size=4)), "data.mean"
    if kind == "std":
        return "data.std", [draw(st.floats(max_value=0, allow_nan=False))], "data.std"
    if kind == "nonfinite":  # inf/nan pass a lower bound alone; they would poison training
        field = draw(st.sampled_from(["data.mean", "data.std", "prune.macs_reduction", "distill.feature_weight"]))
        value = draw(st.sampled_from([float("inf"), float("nan"), float("-inf")]))
        return field, [value] if field.startswith("data.") else value, field
    if kind == "kwargs":  # layer widths that build a network which cannot run
        key = draw(st.sampled_from(["c1", "c2", "f1", "f2"]))
        return "student.kwargs", {key: draw(st.integers(-10**6, 0))}, "student"
    if kind == "unknown_kwarg":
        return "student.kwargs", {f"no_{name}": 1}, "kwargs"
    if kind == "ignored":
        return "prune.ignored_layers", [f"nolayer_{name}"], "prune.ignored_layers"
    return "bench.device", draw(st.sampled_from([f"dev-{name}", f"ssh://{name}.invalid"])), "bench.device"


BREAKERS = ["bad: [1, 2", "\tkey: v", "x: 'unterminated", "{", "a: b: c", "ref: *nowhere",
            "cmd: !!python/object/apply:os.system ['touch pwned']", "- x\ny: 1", "]", "k: \"\\q\""]


@st.composite
def broken_yaml(draw) -> bytes:
    """A recipe file that is not a YAML mapping: syntax errors, code tags, other types, not UTF-8."""
    kind = draw(st.sampled_from(["insert", "non_mapping", "binary", "deep"]))
    if kind == "deep":
        depth = draw(st.integers(1200, 5000))
        return (f"name: {'[' * depth}{']' * depth}\n").encode()
    if kind == "insert":
        lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(BREAKERS)))
        return "\n".join(lines).encode()
    if kind == "non_mapping":
        value = draw(st.one_of(st.lists(st.integers(), min_size=1, max_size=4), st.integers(), st.floats(),
                               st.text(string.ascii_letters, min_size=1, max_size=10)))
        return yaml.safe_dump(value).encode()
    return b"\xff\xfe" + draw(st.binary(max_size=64))


@given(case=bad_field())
@fuzz(120)
def test_recipe_field(case, victim, scratch):
    field, value, token = case
    raw = json.loads(json.dumps(BASE))
    set_path(raw, field, value)
    d = scratch()
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_refused(compress_args(recipe, victim), token, victim)


@given(data=st.data())
@fuzz(60)
def test_recipe_data_and_paths(data, victim, scratch):
    d = scratch()
    field, value, token = data.draw(bad_data_or_path(d))
    raw = json.loads(json.dumps(BASE))
    set_path(raw, field, value)
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_refused(compress_args(recipe, victim), token, victim)


@given(text=broken_yaml())
@fuzz(30)
def test_broken_yaml(text, victim, scratch):
    recipe = scratch() / "broken.yaml"
    recipe.write_bytes(text)
    run_refused(compress_args(recipe, victim), "broken.yaml", victim)
    assert not (REPO / "pwned").exists()


@given(case=bad_field(), form=st.sampled_from(["json", "missing_equals", "not_a_section"]))
@fuzz(25)
def test_set_override(case, form, victim):
    field, value, token = case
    recipe = REPO / "recipes" / "quickstart.yaml"
    if form == "missing_equals":
        run_refused(compress_args(recipe, victim, field), "--set", victim)
    elif form == "not_a_section":
        run_refused(compress_args(recipe, victim, "name.x=1"), "name", victim)
    else:
        run_refused(compress_args(recipe, victim, f"{field}={json.dumps(value)}"), token, victim)


# ---- model files -----------------------------------------------------------------------------------------


@st.composite
def damaged(draw, real: bytes) -> bytes:
    """A real file cut short, or its header followed by random bytes, or random bytes alone."""
    kind = draw(st.sampled_from(["truncate", "header_garbage", "garbage"]))
    if kind == "truncate":
        return real[: draw(st.integers(0, int(len(real) * 0.9)))]
    if kind == "header_garbage":
        return real[: draw(st.integers(1, 64))] + draw(st.binary(min_size=0, max_size=512))
    return draw(st.binary(min_size=0, max_size=512))


# (command, file kind, suffix)
USES = [("bench", "pt"), ("bench", "onnx"), ("bench", "tflite"), ("prune", "pt"), ("export", "pt"),
        ("quantize", "pt"), ("distill", "pt"), ("teacher.weights", "sd"), ("teacher.model", "pt")]


@given(data=st.data(), use=st.sampled_from(USES))
@fuzz(100)
def test_damaged_model_file(data, use, real_files, victim, scratch):
    command, kind = use
    d = scratch()
    suffix = {"sd": "pt"}.get(kind, kind)
    f = d / f"damaged-{kind}.{suffix}"
    f.write_bytes(data.draw(damaged(real_files[kind])))
    if command == "bench":
        args = ["bench", f, "--min-seconds", "0"]
    elif command in ("prune", "export", "quantize"):
        args = [command, f, "--epochs", "0", "--out", victim / "teacher" / "model.pt"] if command == "prune" else [
            command, f, "--out", victim / "teacher"]
    elif command == "distill":
        args = ["distill", "--teacher", f, "--epochs", "0", "--out", victim / "teacher" / "model.pt"]
    else:
        raw = json.loads(json.dumps(BASE))
        if command == "teacher.weights":
            raw["teacher"] = {"model": "lenet_small", "weights": str(f)}
        else:
            raw["teacher"] = {"model": str(f)}
        recipe = d / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        args = compress_args(recipe, victim)
    run_refused(args, f.name, victim)


# ---- data folders with broken images ------------------------------------------------------------------


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bomb(side: int) -> bytes:
    """A PNG header claiming side x side pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@given(
    split=st.sampled_from(["train", "test"]),
    cls=st.sampled_from(["a", "b"]),
    stem=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    ext=st.sampled_from([".png", ".jpg", ".jpeg", ".bmp"]),
    content=st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=256),
        st.builds(lambda n: _png(1)[:n], st.integers(0, 60)),
        st.builds(lambda n: _jpeg(1)[: len(_jpeg(1)) * n // 100], st.integers(0, 60)),
        st.text(string.printable, max_size=40).map(str.encode),
        st.integers(30_000, 2**31 - 1).map(_bomb),
    ),
    how=st.sampled_from(["compress", "bench"]),
)
@fuzz(40)
def test_broken_image_in_folder(split, cls, stem, ext, content, how, real_files, victim, scratch):
    root = scratch() / "images"
    for s in ("train", "test"):
        for i, c in enumerate(("a", "b")):
            (root / s / c).mkdir(parents=True)
            for j in range(2):
                (root / s / c / f"ok{j}.png").write_bytes(_png(10 * i + j))
    bad = root / split / cls / f"broken-{stem}{ext}"
    bad.write_bytes(content)
    if how == "bench":
        model = root.parent / "model.onnx"
        model.write_bytes(real_files["onnx"])
        args = ["bench", model, "--data", f"imagefolder:{root}", "--min-seconds", "0"]
    else:
        raw = json.loads(json.dumps(BASE))
        raw["data"] = f"imagefolder:{root}"
        recipe = root.parent / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        args = compress_args(recipe, victim)
    run_refused(args, bad.name, victim)


@given(batch=st.sampled_from(["data_batch_1", "data_batch_3", "test_batch"]),
       content=st.one_of(st.binary(max_size=200), st.just(pickle.dumps({b"data": [1, 2, 3]})),
                         st.integers(0, 400).map(lambda n: ("evil", n))))
@fuzz(15)
def test_broken_cifar_batch(batch, content, victim, scratch):
    root = scratch() / "cifar-10-batches-py"
    root.mkdir()
    marker = root.parent / "pwned"
    if isinstance(content, tuple):  # a pickle that would run a command (whole or cut short)
        evil = pickle.dumps(_Evil(marker))
        content = evil[: content[1]] if content[1] < len(evil) else evil
    good = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(content if name == batch else good)
    raw = json.loads(json.dumps(BASE))
    raw["data"] = f"cifar10:{root}"
    recipe = root.parent / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_refused(compress_args(recipe, victim), batch, victim)
    assert not marker.exists()


class _Evil:
    """Unpickling this would run a shell command that creates `marker`; readers must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- command-line options ------------------------------------------------------------------------------

# (command and fixed arguments, option, a strategy of values the option must refuse)
OPTIONS = [
    (["bench", "{onnx}"], "--threads", st.one_of(st.integers(max_value=-1), st.integers(min_value=257))),
    (["bench", "{onnx}"], "--min-seconds", st.floats(max_value=-0.001, allow_nan=False)),
    (["bench", "{onnx}"], "--device", st.from_regex(r"nodev-[a-z]{1,6}", fullmatch=True)),
    (["train", "--out", "{victim}/teacher/model.pt"], "--epochs",
     st.text(string.ascii_letters, min_size=1, max_size=6)),
    (["train", "--out", "{victim}/teacher/model.pt"], "--epochs", st.integers(max_value=-1)),
    (["train", "--out", "{victim}/teacher/model.pt"], "--batch-size", st.integers(max_value=0)),
    (["prune", "{pt}", "--out", "{victim}/teacher/model.pt"], "--ratio",
     st.one_of(st.floats(max_value=-0.001, allow_nan=False), st.floats(min_value=1.0, allow_nan=False))),
    (["quantize", "{pt}", "--out", "{victim}/teacher"], "--calib-samples", st.integers(max_value=0)),
    (["compress", "{recipe}", "--out", "{victim}", "--resume"], "--out", st.just("{file}/sub")),
    (["compress", "{recipe}", "--out", "{victim}"], "--nonsense", st.just("1")),
]


@given(data=st.data(), which=st.integers(0, len(OPTIONS) - 1))
@fuzz(30)
def test_bad_option(data, which, real_files, victim, scratch):
    d = scratch()
    (d / "model.onnx").write_bytes(real_files["onnx"])
    (d / "model.pt").write_bytes(real_files["pt"])
    (d / "plain.txt").write_text("a file, not a folder")
    fixed, option, values = OPTIONS[which]
    value = str(data.draw(values))
    names = {"onnx": d / "model.onnx", "pt": d / "model.pt", "victim": victim, "file": d / "plain.txt",
             "recipe": REPO / "recipes" / "quickstart.yaml"}
    args = [a.format(**names) for a in fixed] + [option, value.format(**names)]
    token = "plain.txt" if "{file}" in value else ("--device" if option == "--device" else option)
    line = run_refused(args, token if option != "--device" else "nodev-", victim)
    assert "--help" in line or "device" in line or "plain.txt" in line or option in line


@pytest.mark.parametrize("kind", ["pt", "onnx", "tflite"])
def test_undamaged_files_are_accepted(kind, real_files, tmp_path):
    """The control: the same files, undamaged, benchmark fine, so each refusal above is the damage's doing."""
    f = tmp_path / f"model.{kind}"
    f.write_bytes(real_files[kind])
    result = CliRunner().invoke(main, ["bench", str(f), "--min-seconds", "0", "--json"])
    assert result.exit_code == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["eval_samples"] == 1000
