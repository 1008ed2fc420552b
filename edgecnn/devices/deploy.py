"""Deploy: benchmark a run's deployable models on a device and merge the results into its report.

The device gets a fresh work directory with the models it can run (by its profile's preferred
runtimes; an OpenVINO .xml travels with its .bin), `edgecnn/runtime/agent.py` and the run's
evaluation batch (`bench/eval.npz`); the agent runs there once per model and prints JSON, which
comes back as report.json model entries with `device` set to the device's name. The files that
could win the device's deploy pick are then timed again there, in alternating rounds on a one-image
batch, each keeping its best round (`latency_rounds_p50_ms`, analysis/selection.py). A decoding
task's batch (a detector's, a keypoint model's) carries its task and head spec: the task's numpy
decoder (decode.py) travels beside the agent, the device decodes (and runs NMS), and the
predictions come back in the JSON to be scored here (COCO mAP, OKS AP by pycocotools), exactly
as a local bench scores them. Of a run's files,
the one marked `deploy` there is the fastest on that device within the run's accuracy budget
(analysis/selection.py). The work directory is removed afterwards unless `keep`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecnn.analysis.selection import CONFIRM_ROUNDS, could_win, note_retimed, pick_deployment, time_again
from edgecnn.analysis.stats import classification_fields
from edgecnn.core.artifacts import safe_join
from edgecnn.core.errors import UserError
from edgecnn.devices.profiles import DeviceProfile, Transport, get_profile, transport_for
from edgecnn.runtime.agent import FORMAT_RUNTIMES, MODEL_EXTENSIONS, model_size
from edgecnn.runtime.checks import check_model_file
from edgecnn.runtime.host import AGENT_PATH, MEASURED, measured, write_timing_npz
from edgecnn.runtime.int8_proof import ENTRY_KEYS
from edgecnn.tasks.base import Task
from edgecnn.tasks.registry import get_task

AGENT_TIMEOUT = 3600
TIMING_NPZ = "timing.npz"  # the one-image batch the files that could win are timed again on
PRECISION_TAGS = ("int8", "bf16", "fp16")  # model.<tag>.<ext>: the precision of a single deployed file
STAGE_OF = {"teacher": "teacher", "student": "distill"}


@dataclass
class Job:
    """One model file to benchmark, and the report fields it carries over from the local run."""

    file: Path
    format: str
    base: dict


def _remote_name(job: Job, run_dir: Path | None) -> str:
    """A unique, shell-safe file name on the device (the run-relative path with `/` -> `__`)."""
    rel = job.file.relative_to(run_dir) if run_dir and job.file.is_relative_to(run_dir) else Path(job.file.name)
    return "__".join(rel.parts)


def _with_companions(file: Path, name: str) -> list[tuple[Path, str]]:
    """A model file and the files it needs, under their names on the device (an IR's .bin keeps its stem)."""
    out = [(file, name)]
    if file.suffix.lower() == ".xml":
        out.append((file.with_suffix(".bin"), str(Path(name).with_suffix(".bin"))))
    return out


def read_report(run_dir: Path) -> dict:
    """A run directory's report.json, or a UserError saying how to make one."""
    path = run_dir / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{run_dir}: no report.json; give a finished run directory (edgecnn compress) or a model file"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable report ({e.__class__.__name__}); rerun `edgecnn compress --resume`"
        ) from None


def run_jobs(run_dir: Path, report: dict, formats: list[str]) -> list[Job]:
    """The run's models the device can take: one job per locally benchmarked (name, format, precision)."""
    local_device = (report.get("recipe", {}).get("bench") or {}).get("device", "local-cpu")
    seen, jobs = set(), []
    for m in report.get("models", []):
        key = (m["name"], m["format"], m["precision"])
        if m.get("device", local_device) != local_device or key in seen or m["format"] not in formats:
            continue
        seen.add(key)
        if m["format"] == "pytorch":
            stage = STAGE_OF.get(m["name"], "prune" if m["name"].endswith("-pruned") else m["name"])
            file = run_dir / "bench" / f"{stage}.ts"
        else:  # report.json is input too: a path in it may not reach outside the run directory
            try:
                file = safe_join(run_dir, m["path"])
            except UserError:
                raise UserError(
                    f"{run_dir / 'report.json'}: model path {m['path']!r} lies outside the run directory; "
                    "regenerate the report with `edgecnn compress --resume`"
                ) from None
        if not file.is_file():
            raise UserError(f"{file}: missing from the run; rerun `edgecnn compress --resume` on {run_dir}")
        base = {k: m.get(k) for k in ("name", "format", "precision", "path", "size_bytes", "params", "macs", "parity",
                                      "decision_score")}
        base.update({k: m[k] for k in ENTRY_KEYS if k in m})  # an int8 file's integer-MAC proof travels with it
        jobs.append(Job(file, m["format"], base))
    return jobs


def model_job(path: Path) -> Job:
    """A single model file (.onnx, .tflite, an OpenVINO .xml with its .bin, or TorchScript) as a job."""
    from edgecnn.models.files import is_torchscript

    fmt = MODEL_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{path}: cannot deploy this format; give .onnx, .tflite, an OpenVINO .xml or a TorchScript .ts file"
        )
    if path.suffix.lower() == ".pt" and not is_torchscript(path):
        raise UserError(
            f"{path}: not a TorchScript file; deploy its exported .onnx, .tflite or OpenVINO .xml file (edgecnn export)"
        )
    tags = [t for t in PRECISION_TAGS if f".{t}." in path.name]
    base = {
        "name": path.stem,
        "format": fmt,
        "precision": tags[0] if tags else "fp32",
        "path": str(path),
        "size_bytes": model_size(str(path)),
        "params": None,
        "macs": None,
        "parity": None,
    }
    return Job(path, fmt, base)


def _agent_json(proc, profile: DeviceProfile, what: str) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:200]
        if "No module named 'numpy'" in proc.stderr:
            raise UserError(
                f"device {profile.name}: {profile.python} there has no numpy; install numpy and a runtime "
                "(tflite-runtime or onnxruntime) on the device, or set `python:` in its profile"
            ) from None
        raise UserError(f"device {profile.name}: the agent failed on {what} ({err})") from None
    if "error" in result:
        raise UserError(f"device {profile.name}: the agent failed on {what} ({result['error'][:300]})")
    return result


def choose_runtime(profile: DeviceProfile, fmt: str, available: dict) -> str | None:
    """The device's first preferred runtime that runs `fmt` and is installed there."""
    for rt in profile.runtimes:
        if rt not in FORMAT_RUNTIMES[fmt]:
            continue
        installed = rt in available or (rt == "torch-cuda" and "torch" in available)
        if installed:
            return rt
    return None


@dataclass
class Batch:
    """The evaluation batch shipped to a device: its file, its task and, for a task that decodes, its head spec and
    targets."""

    npz: Path
    task: Task
    head: dict | None
    targets: object = None

    @classmethod
    def read(cls, npz: Path) -> Batch:
        import numpy as np

        try:
            with np.load(npz) as z:
                if "head" not in z.files:
                    return cls(npz, get_task("classification"), None)
                head = json.loads(str(z["head"]))
                task = str(z["task"]) if "task" in z.files else "detection"  # batches before keypoints named none
                return cls(npz, get_task(task), head, z["y"])
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{npz}: not an evaluation batch ({e.__class__.__name__}); rerun the bench stage") from None

    def scores(self, m: dict) -> dict | None:
        """A decoding task's task, score and metrics from the predictions the device returned (None: classification)."""
        if self.head is None:
            return None
        import numpy as np

        arrays = {k: np.asarray(v) for k, v in m.pop("predictions").items()}
        metrics = self.task.metrics(self.task.agent_predictions(arrays), self.targets, self.head)
        return {"task": self.task.name, "score": self.task.score(metrics), "metrics": metrics}


def _entry(job: Job, m: dict, profile: DeviceProfile, batch: Batch | None = None) -> dict:
    scores = batch.scores(m) if batch is not None else None
    entry = {
        **job.base,
        **measured(m, scores),
        "latency_rounds_p50_ms": [m["latency_ms"]["p50"]],
        "device": profile.name,
        "emulated": profile.emulated,
        "machine": m["machine"],
        "device_python": m["python"],
    }
    if profile.emulated:
        entry["notes"] = [f"latency measured under qemu-user emulation ({profile.cpu}), not on real hardware"]
    return entry


def _failed_entry(job: Job, profile: DeviceProfile, runtime: str, why: str, task: str = "classification") -> dict:
    """A model the agent could not measure on the device: null measurements and the reason."""
    unscored = ({"accuracy": None, **classification_fields(None, None)} if task == "classification"
                else {"task": task, "score": None, "metrics": None})
    return {
        **job.base,
        **dict.fromkeys(MEASURED),
        **unscored,
        "runtime": runtime,
        "latency_rounds_p50_ms": [],
        "device": profile.name,
        "emulated": profile.emulated,
        "notes": [why],
    }


def benchmark_on_device(
    profile: DeviceProfile,
    jobs: list[Job],
    npz: Path,
    *,
    run_dir: Path | None = None,
    threads: int | None = None,
    min_seconds: float = 1.0,
    warmup: int = 10,
    min_iters: int = 50,
    keep: bool = False,
    strict: bool = False,
    pick: Callable[[list[dict]], dict | None] | None = None,
    log=None,
) -> tuple[list[dict], dict]:
    """Copy the jobs, the agent and the batch to a fresh work dir on the device, run them, clean up.

    A model the agent fails on becomes an entry with null measurements and a note, unless `strict`.
    With `pick` (the deploy pick of a list of entries), the files that could win it are timed again there.
    """
    for j in jobs:
        if j.format not in profile.formats():
            raise UserError(
                f"{j.file}: device {profile.name} runs {' and '.join(profile.formats())} models, not {j.format}; "
                "deploy the model's exported .onnx or .tflite file"
            )
    transport = transport_for(profile)
    _check_ready(transport)
    python = transport.python_argv()
    if strict:  # one model of the user's: a damaged file is the one error line, before any work
        for j in jobs:
            check_model_file(j.file)
    batch = Batch.read(npz)
    decoder = batch.task.decoder_file() if batch.head is not None else None
    workdir = transport.mkdtemp()
    info: dict = {"workdir": workdir}
    try:
        transport.put([AGENT_PATH, npz], workdir)
        if decoder is not None:  # the task's numpy decoder, beside the agent
            _put_renamed(transport, [(decoder, "decode.py")], workdir)
        proc = transport.run([*python, AGENT_PATH.name, "--list-runtimes"], workdir, timeout=300)
        probe = _agent_json(proc, profile, "--list-runtimes")
        info.update({k: probe.get(k) for k in ("runtimes", "machine", "python", "numpy")})
        plan = [(j, choose_runtime(profile, j.format, probe["runtimes"])) for j in jobs]
        info["skipped"] = [
            f"{j.base['name']} {j.format} {j.base['precision']}: no {j.format} runtime" for j, rt in plan if not rt
        ]
        plan = [(j, rt) for j, rt in plan if rt]
        if not plan:
            wanted = sorted({rt for j in jobs for rt in profile.runtimes if rt in FORMAT_RUNTIMES[j.format]})
            raise UserError(
                f"device {profile.name}: no runtime there for these models (has: "
                f"{', '.join(probe['runtimes']) or 'none'}; profile wants: {', '.join(profile.runtimes)}); "
                f"install one of {', '.join(wanted) or 'tflite-runtime, onnxruntime'} on the device"
            )
        staged = [(j, rt, _remote_name(j, run_dir)) for j, rt in plan]
        _put_renamed(transport, [f for j, _, name in staged for f in _with_companions(j.file, name)], workdir)

        def agent(name: str, rt: str, data: str) -> list[str]:
            return [
                *python, AGENT_PATH.name, "--model", name, "--data", data, "--runtime", rt,
                "--threads", str(profile.threads if threads is None else threads),
                "--min-seconds", str(min_seconds), "--warmup", str(warmup), "--min-iters", str(min_iters),
                *(["--decoder", "decode.py", "--predictions-inline"] if decoder is not None else []),
            ]

        entries = []
        for j, rt, name in staged:
            if log:
                log(f"{profile.name}: {j.base['name']} {j.format} {j.base['precision']} on {rt}")
            try:
                check_model_file(j.file)  # a damaged file never reaches the runtime's parser
                proc = transport.run(agent(name, rt, npz.name), workdir, timeout=AGENT_TIMEOUT)
                entries.append(_entry(j, _agent_json(proc, profile, j.file.name), profile, batch))
            except UserError as e:  # one model failing there: recorded, the others still measured
                if strict:
                    raise
                if log:
                    log(f"{profile.name}: {e}")
                entries.append(_failed_entry(j, profile, rt, str(e), batch.task.name))
        if pick is not None:
            _retime(transport, workdir, npz, pick, [(e, agent(name, rt, TIMING_NPZ)) for e, (_, rt, name)
                                                    in zip(entries, staged, strict=True)], profile, log)
    finally:
        if not keep:
            transport.remove(workdir)
    return entries, info


def _retime(transport: Transport, workdir: str, npz: Path, pick: Callable[[list[dict]], dict | None],
            runs: list[tuple[dict, list[str]]], profile: DeviceProfile, log=None) -> None:
    """Time the files that could win the pick again on the device, in alternating rounds on a one-image batch;
    each entry keeps its best round (analysis/selection.py)."""
    files = [e for e, _ in runs if e["format"] != "pytorch"]
    rivals = could_win(pick(files), files)
    if not rivals:
        return
    argv = {id(e): a for e, a in runs}
    with tempfile.TemporaryDirectory(prefix="edgecnn-deploy-") as tmp:
        write_timing_npz(npz, Path(tmp) / TIMING_NPZ)
        transport.put([Path(tmp) / TIMING_NPZ], workdir)
    if log:
        log(f"{profile.name}: timing the {len(rivals)} files that could be deployed again, "
            f"{CONFIRM_ROUNDS} alternating rounds")

    def time_one(e: dict) -> dict:
        proc = transport.run(argv[id(e)], workdir, timeout=AGENT_TIMEOUT)
        return _agent_json(proc, profile, Path(e["path"]).name)["latency_ms"]

    try:
        time_again(rivals, time_one)
    except UserError as e:  # the first measurements stand; nothing is lost to a failed extra round
        if log:
            log(f"{profile.name}: timing again failed, keeping the first timings ({e})")


def _put_renamed(transport: Transport, files: list[tuple[Path, str]], workdir: str) -> None:
    """Copy files under new names (through a local staging folder of hard links or copies)."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-deploy-") as tmp:
        staged = []
        for src, name in files:
            dst = Path(tmp) / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy(src, dst)
            staged.append(dst)
        transport.put(staged, workdir)


def _check_ready(transport: Transport) -> None:
    if transport.profile.transport == "local":
        reason = transport.probe()
        if reason:
            raise UserError(f"device {transport.profile.name}: {reason}; use local-cpu or another device")


def device_pick(report: dict, entries: list[dict], device: str) -> dict | None:
    """The deployed file on `device`: the run's budget and decision scores, this device's p50s; marks `deploy`."""
    recipe = report.get("recipe") or {}
    local_device = (recipe.get("bench") or {}).get("device", "local-cpu")
    local = (report.get("deployments") or {}).get(local_device) or {}
    recipe_q = recipe.get("quantize") or {}
    budget = local.get("budget", recipe_q.get("accuracy_budget", 0.01))
    files = [e for e in entries if e["format"] != "pytorch"]
    max_size_kb = local.get("max_size_kb", (recipe.get("bench") or {}).get("max_size_kb"))
    pick = pick_deployment(files, local.get("reference_score"), budget, device, max_size_kb)
    for e in entries:
        e["deploy"] = bool(pick and pick["chosen"]) and e in files and all(
            e[k] == pick["chosen"][k] for k in ("name", "format", "precision", "path")
        )
    note_retimed(pick, files)
    return pick


def merge_into_report(run_dir: Path, report: dict, entries: list[dict], deployment: dict) -> dict:
    """Add device entries to report.json (replacing the same device+model+format+precision), rewrite report.md."""
    from edgecnn.analysis.report import write_report

    def key(m: dict) -> tuple:
        return (m.get("device"), m["name"], m["format"], m["precision"])

    new = {key(e) for e in entries}
    report["models"] = [m for m in report.get("models", []) if key(m) not in new] + entries
    report.setdefault("deployments", {})[deployment["device"]] = deployment
    write_report(run_dir, report)
    return report


def deploy(
    target: Path,
    device: str,
    *,
    npz: Path | None = None,
    threads: int | None = None,
    min_seconds: float | None = None,
    keep: bool = False,
    log=None,
) -> list[dict]:
    """Benchmark a run directory's (or one model file's) deployable models on `device`.

    For a run directory the entries are merged into its report.json/report.md; for a single model
    file `npz` is the evaluation batch to use.
    """
    profile = get_profile(device)
    if target.is_dir():
        report = read_report(target)
        run_npz = target / "bench" / "eval.npz"
        if not run_npz.is_file():
            raise UserError(f"{run_npz}: missing; rerun `edgecnn compress --resume` on {target} to benchmark it")
        jobs = run_jobs(target, report, profile.formats())
        if not jobs:
            raise UserError(
                f"{target}: no model there in a format device {profile.name} runs ({', '.join(profile.formats())})"
            )
        bench = report.get("recipe", {}).get("bench") or {}
        entries, info = benchmark_on_device(
            profile,
            jobs,
            run_npz,
            run_dir=target,
            threads=threads,
            min_seconds=bench.get("min_seconds", 1.0) if min_seconds is None else min_seconds,
            warmup=bench.get("warmup", 10),
            min_iters=bench.get("min_iters", 50),
            keep=keep,
            pick=lambda entries: device_pick(report, entries, profile.name),
            log=log,
        )
        deployment = {
            "device": profile.name,
            "target": profile.target(),
            "transport": profile.transport,
            "emulated": profile.emulated,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in info.items() if k != "workdir"},
            **({"kept_workdir": info["workdir"]} if keep else {}),
            **(device_pick(report, entries, profile.name) or {}),
        }
        merge_into_report(target, report, entries, deployment)
        return entries
    if not target.is_file():
        raise UserError(f"{target}: not found; give a run directory or a model file")
    if npz is None:
        raise UserError(f"{target}: a single model needs evaluation data; pass --data")
    entries, _ = benchmark_on_device(
        profile,
        [model_job(target)],
        npz,
        threads=threads,
        min_seconds=min_seconds or 1.0,
        keep=keep,
        strict=True,
        log=log,
    )
    return entries
