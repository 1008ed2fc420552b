"""report.json, report.md and the size/accuracy/latency plot of a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecnn.analysis.sensitivity import sensitivity_lines
from edgecnn.analysis.stats import ci_text, entry_interval
from edgecnn.core.artifacts import atomic_path, atomic_write_json, atomic_write_text
from edgecnn.core.environment import environment

SCHEMA = "edgecnn-report/1"


def build_report(recipe: dict, results: dict[str, dict], status: dict[str, str], data: dict) -> dict:
    """The report: recipe, environment, stage summaries and every measured model."""
    stages = {}
    for name, st in status.items():
        r = {k: v for k, v in results.get(name, {}).items() if k not in ("models", "_hash")}
        stages[name] = {"status": st, **r}
    decided = sorted({r["decision_split"] for r in results.values() if isinstance(r, dict) and r.get("decision_split")})
    return {
        "schema": SCHEMA,
        "recipe": recipe,
        "environment": environment(),
        "data": data,
        "decision_split": decided[0] if len(decided) == 1 else (decided or None),
        "stages": stages,
        "reused_stages": [n for n, s in status.items() if s == "reused"],
        "notes": [f"{name}: {n}" for name in status for n in results.get(name, {}).get("notes", [])]
        + mostly_float_notes(results.get("bench", {}).get("models", [])),
        "models": results.get("bench", {}).get("models", []),
        "pruning": pruning_summary(results, results.get("bench", {}).get("models", [])),
        "deployments": deployments(results.get("bench", {}).get("deployment")),
    }


def deployments(pick: dict | None) -> dict:
    """report.json `deployments`: per device, the deployed file and its candidates (the run's own device first)."""
    return {pick["device"]: pick} if pick else {}


def deployment_line(report: dict) -> str:
    """One report.md sentence per device: what is deployed there and why."""
    lines = []
    for device, d in (report.get("deployments") or {}).items():
        if d.get("reason"):
            lines.append(f"Deployed on {device}: {d['reason']}.")
    return "\n\n".join(lines)


def pruning_summary(results: dict[str, dict], models: list[dict]) -> dict | None:
    """MACs and params before/after pruning, and the pruned model's latency against the unpruned one."""
    r = results.get("prune")
    if not r or "macs_before" not in r:
        return None
    keys = ("source", "mode", "ratio", "macs_before", "macs_after", "macs_reduction", "params_before", "params_after")
    out = {k: r.get(k) for k in keys}
    out["latency_while_pruning"] = r.get("latency")
    unpruned_name = "student" if r.get("source") == "distill" else "teacher"
    for m in models:
        if m["format"] != "pytorch" or not m.get("latency_ms") or not m["name"].endswith("-pruned"):
            continue
        ref = [u for u in models if u["name"] == unpruned_name and u["format"] == "pytorch" and u.get("latency_ms")]
        if ref:
            a, b = ref[0]["latency_ms"]["p50"], m["latency_ms"]["p50"]
            out["latency_bench"] = {"format": "pytorch", "runtime": m.get("runtime"), "device": m.get("device"),
                                    "threads": m.get("threads"), "unpruned_p50_ms": a, "pruned_p50_ms": b,
                                    "speedup": a / b if b else None}
    return out


def pruning_line(p: dict | None) -> str:
    """One report.md sentence on what pruning bought."""
    if not p:
        return ""
    source = {"distill": "student", "teacher": "teacher"}.get(p["source"], p["source"])
    text = (f"Pruning ({source}): MACs {p['macs_before']:,} -> {p['macs_after']:,} "
            f"({p['macs_reduction']:.2f}x fewer), params {p['params_before']:,} -> {p['params_after']:,}")
    lat = p.get("latency_bench") or {}
    if lat.get("speedup"):
        text += (f"; {lat['device']} {lat['runtime']} p50 {lat['unpruned_p50_ms']:.3f} -> "
                 f"{lat['pruned_p50_ms']:.3f} ms (speedup {lat['speedup']:.2f}x)")
    return text + "."


def mostly_float_notes(models: list[dict]) -> list[str]:
    """A note per int8 file running under half of its MACs in integer kernels (read from the file)."""
    return [f"{m['name']} {m['format']} int8 ({m.get('path')}) runs only {m['integer_mac_share']:.0%} of its MACs in "
            f"integer kernels: mostly float despite its name" for m in models if m.get("mostly_float")]


def integer_cell(m: dict) -> str:
    """`97%` of the MACs in integer kernels (`41% mostly float!` under half), `-` for float files."""
    share = m.get("integer_mac_share")
    if share is None:
        return "-"
    return f"{share:.0%}" + (" mostly float!" if m.get("mostly_float") else "")


def fmt_cell(v, spec: str, none: str = "-") -> str:
    """A table cell: `v` formatted with `spec`, or `none` when there is no value."""
    return none if v is None else format(v, spec)


@dataclass(frozen=True)
class ScoreView:
    """How a task's score reads in report.md: its column (score and one metric beside it), axis and legend."""

    column: str
    beside: str | None
    axis: str
    legend: str


SCORE_VIEWS = {
    "classification": ScoreView("accuracy [95% CI]", None, "top-1 accuracy (%)",
                                "Accuracy: top-1 on the test split with its 95% Wilson interval."),
    "detection": ScoreView("mAP (mAP50)", "mAP50", "COCO mAP@[.5:.95] (%)",
                           "mAP: COCO mAP@[.5:.95] (mAP@.5 in brackets) on the test split by pycocotools, from the "
                           "detections the agent decoded (numpy decode + NMS); e2e: one image to detections, decoding "
                           "and NMS included."),
    "keypoints": ScoreView("OKS AP (PCK@0.2)", "pck20", "OKS AP@[.5:.95] (%)",
                           "OKS AP: COCO keypoint AP@[.5:.95] on the test split by pycocotools (per-keypoint sigmas "
                           "of the data or recipe), PCK@0.2 of the box's longer side in brackets, from the keypoints "
                           "the agent decoded (numpy heatmap decoding); e2e: one image to keypoints, decoding "
                           "included."),
}
"""A task's score in report.md (a task not listed here shows its score and the metrics table alone)."""


def score_view(task: str) -> ScoreView:
    return SCORE_VIEWS.get(task) or ScoreView("score", None, "score (%)", f"Score: the {task} task's primary metric "
                                              "on the test split.")


def accuracy_cell(m: dict) -> str:
    """`0.9712 [0.961, 0.980]`: the test top-1 and its 95% Wilson interval; another task's score with the metric
    its ScoreView puts beside it (a detector's `mAP (mAP50)`)."""
    task = m.get("task", "classification")
    if task != "classification":
        metrics, beside = m.get("metrics") or {}, score_view(task).beside
        return fmt_cell(m.get("score"), ".4f") + (f" ({metrics[beside]:.4f})" if metrics.get(beside) is not None
                                                  else "")
    ci = ci_text(entry_interval(m))
    return fmt_cell(m.get("accuracy"), ".4f") + (f" {ci}" if ci else "")


def report_task(models: list[dict]) -> str:
    """The task of a report's models (classification for reports written before tasks)."""
    return next((m["task"] for m in models if m.get("task")), "classification")


def model_rows(models: list[dict]) -> list[list[str]]:
    """Table rows: name, format, precision, device, size, params, MACs, share of MACs in integer kernels,
    score, p50, p90, memory, runtime (a decoding task's end-to-end p50, decoding included, after its p90)."""
    rows = []
    e2e = has_e2e(models)
    for m in models:
        lat = m.get("latency_ms") or {}
        dev = m.get("device", "") + (" (emulated)" if m.get("emulated") else "")
        rows.append(
            [
                m["name"],
                m["format"],
                m["precision"],
                dev,
                fmt_cell(m.get("size_bytes", 0) / 1024, ".1f"),
                fmt_cell(m.get("params"), ","),
                fmt_cell(m.get("macs"), ","),
                integer_cell(m),
                accuracy_cell(m),
                fmt_cell(lat.get("p50"), ".3f"),
                fmt_cell(lat.get("p90"), ".3f"),
                *([fmt_cell((m.get("e2e_latency_ms") or {}).get("p50"), ".3f")] if e2e else []),
                fmt_cell(m.get("peak_memory_mb"), ".0f"),
                m.get("runtime", ""),
            ]
        )
    return rows


def has_e2e(models: list[dict]) -> bool:
    """Whether the models are of a task the agent decodes (then timed end to end, decoding included)."""
    return report_task(models) != "classification"


def header(task: str) -> list[str]:
    """The model table's header for a task: its score column (ScoreView) and, for a decoding task, e2e p50."""
    cols = [(score_view(task).column if c.startswith("accuracy") else c) for c in HEADER]
    if task == "classification":
        return cols
    return cols[: cols.index("p90 ms") + 1] + ["e2e p50 ms"] + cols[cols.index("p90 ms") + 1 :]


def metrics_table(models: list[dict]) -> str:
    """Every metric of every model (a task's `metrics`: mAP50, PCK@0.2, ...), one row per model; '' if none."""
    names = list(dict.fromkeys(k for m in models for k, v in (m.get("metrics") or {}).items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)))
    if report_task(models) == "classification" or not names:
        return ""
    rows = [[m["name"], m["format"], m["precision"], m.get("device", ""),
             *(fmt_cell((m.get("metrics") or {}).get(k), ".4f") for k in names)] for m in models]
    return markdown_table(["model", "format", "precision", "device", *names], rows)


HEADER = [
    "model",
    "format",
    "precision",
    "device",
    "size KB",
    "params",
    "MACs",
    "int8 MACs",
    "accuracy [95% CI]",
    "p50 ms",
    "p90 ms",
    "peak MB",
    "runtime",
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of formatted cells ('|' inside a cell becomes '/')."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_plot(models: list[dict], path: Path, title: str) -> None:
    """Accuracy against p50 latency (marker area ~ file size), one colour per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"pytorch": "tab:blue", "onnx": "tab:orange", "tflite": "tab:green", "openvino": "tab:purple"}
    task = report_task(models)
    for m in models:
        score = m.get("score", m.get("accuracy"))
        if score is None or not m.get("latency_ms"):
            continue
        x, y = m["latency_ms"]["p50"], 100 * score
        ci = entry_interval(m)
        if ci:
            ax.errorbar(x, y, yerr=[[y - 100 * ci[0]], [100 * ci[1] - y]], fmt="none", ecolor="grey", elinewidth=0.8,
                        capsize=2, alpha=0.6)
        ax.scatter(
            x,
            y,
            s=20 + 200 * (m["size_bytes"] / max(mm["size_bytes"] for mm in models)),
            c=colours.get(m["format"], "grey"),
            marker="o" if m["precision"] == "fp32" else "s",
            alpha=0.7,
        )
        ax.annotate(
            f"{m['name']} {m['format']} {m['precision']}", (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel(score_view(task).axis)
    ax.set_title(title + " (circles fp32, squares int8/bf16/fp16; area ~ size; bars: 95% interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def split_size(data: dict, split: str) -> str:
    n = data.get(split)
    return f" ({n:,} images)" if isinstance(n, int) else ""


def write_report(run_dir: Path, report: dict) -> None:
    """Write report.json, report.md and pareto.png atomically."""
    models = report["models"]
    name = report["recipe"].get("name", "run")
    atomic_write_json(run_dir / "report.json", report)
    env = report["environment"]
    md = [
        f"# edgecnn report: {name}",
        "",
        f"Data: `{report['data'].get('spec')}`, evaluated on {models[0]['eval_samples'] if models else 0} test images. "
        f"Machine: {env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, onnxruntime {env['onnxruntime']}.",
        f"Latency: batch 1, {models[0]['threads'] if models else 1} thread(s), p50/p90 over repeated runs. "
        + score_view(report_task(models)).legend
        + (f" Choices (int8 config, gates, QAT, deployed file) were made on the {report['decision_split']} split"
           f"{split_size(report['data'], report['decision_split'])}, never on the test split."
           if isinstance(report.get("decision_split"), str) else ""),
        "",
        markdown_table(header(report_task(models)), model_rows(models)),
        "",
        *([f"Metrics ({report_task(models)}, test split):", "", table, ""] if (table := metrics_table(models)) else []),
        pruning_line(report.get("pruning")),
        "",
        deployment_line(report),
        "",
        *sensitivity_lines(report["stages"].get("quantize")),
        "",
        *[f"- note: {n}" for n in report.get("notes", [])],
        "",
        "Stages: " + ", ".join(f"{k} ({v['status']})" for k, v in report["stages"].items()),
        "",
        "![pareto](pareto.png)",
        "",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    if models:
        write_plot(models, run_dir / "pareto.png", name)
