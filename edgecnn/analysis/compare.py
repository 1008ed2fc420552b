"""`edgecnn compare`: many runs' reports in one table, their Pareto fronts, and the best model under a budget.

Runs are comparable only when their reports share the schema, the task and the evaluation data
(the hash of the evaluation split's images and labels, and the number of images scored); anything
else is refused with one `error:` line. Models are ranked by their `score`, the task's primary
metric (top-1 accuracy, COCO mAP@[.5:.95]); `--min-accuracy` is a minimum score.

Outputs: compare.json, compare.md and a self-contained compare.html
(plots embedded as base64 PNG), plus one PNG per device.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgecnn.analysis.report import SCHEMA, fmt_cell, markdown_table
from edgecnn.analysis.stats import ci_text, entry_interval, two_proportion_p
from edgecnn.core.artifacts import atomic_path, atomic_write_json, atomic_write_text
from edgecnn.core.errors import UserError

COLUMNS = ["run", "model", "format", "precision", "device", "size KB", "params", "MACs", "accuracy [95% CI]",
           "p50 ms", "p90 ms", "peak MB", "front"]
SIGNIFICANCE = 0.05  # two models' accuracies differ when the two-proportion test's p-value is below this
SCORE_NAMES = {"classification": "accuracy", "detection": "mAP", "keypoints": "OKS AP"}


def score_name(row: dict) -> str:
    """What a row's `score` is, in words: accuracy (top-1), mAP (COCO mAP@[.5:.95]), ..."""
    return SCORE_NAMES.get(row.get("task", "classification"), "score")


@dataclass(frozen=True)
class Budget:
    """Limits a chosen model must meet (None: no limit)."""

    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    min_accuracy: float | None = None
    device: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_size_kb, self.min_accuracy))


def expand_runs(paths: list[Path]) -> list[Path]:
    """Run directories; a sweep directory (variants/*/report.json, no report.json) stands for its variants."""
    runs: list[Path] = []
    for p in paths:
        variants = sorted(p.glob("variants/*/report.json")) if p.is_dir() else []
        if p.is_dir() and not (p / "report.json").exists() and variants:
            runs += [v.parent for v in variants]
        else:
            runs.append(p)
    return runs


def load_report(run: Path) -> dict:
    """A run's report.json (a run directory or the file itself); missing or corrupt is a UserError."""
    path = run / "report.json" if run.is_dir() else run
    if not path.is_file():
        raise UserError(f"{path}: no report.json; give a finished run directory (edgecnn compress writes one)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: corrupt report.json ({e.__class__.__name__}); rerun that run with --resume") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise UserError(f"{path}: not an edgecnn report (no 'models' list); give a run directory of edgecnn compress")
    for i, m in enumerate(report["models"]):
        if not isinstance(m, dict) or not {"name", "format", "precision"} <= set(m):
            raise UserError(f"{path}: models[{i}] lacks name/format/precision; the report is corrupt, rerun the run")
    return report


def _eval_identity(report: dict) -> dict:
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    ev = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    samples = {m.get("eval_samples") for m in report["models"] if m.get("eval_samples") is not None}
    return {"spec": data.get("spec"), "test": data.get("test"), "sha256": ev.get("sha256"), "samples": samples}


def check_comparable(labelled: list[tuple[str, dict]]) -> None:
    """Refuse runs whose reports differ in schema, task or evaluation data (UserError naming both runs)."""
    first_label, first = labelled[0]
    tasks = {label: sorted({m.get("task", "classification") for m in rep["models"]}) or ["classification"]
             for label, rep in labelled}
    for label, t in tasks.items():
        if t != tasks[first_label]:
            raise UserError(f"cannot compare {first_label} and {label}: they are different tasks "
                            f"({', '.join(tasks[first_label])} vs {', '.join(t)}), scored differently; "
                            "compare runs of one task")
    schema0 = first.get("schema")
    if schema0 != SCHEMA:
        raise UserError(f"{first_label}: report schema {schema0!r}, this edgecnn reads {SCHEMA!r}; rerun it with "
                        "this version (edgecnn compress --resume)")
    id0 = _eval_identity(first)
    for label, rep in labelled[1:]:
        if rep.get("schema") != schema0:
            raise UserError(f"cannot compare {first_label} and {label}: report schemas differ "
                            f"({schema0!r} vs {rep.get('schema')!r}); rerun the older one with this edgecnn")
        idn = _eval_identity(rep)
        if id0["sha256"] and idn["sha256"]:
            if id0["sha256"] != idn["sha256"]:
                raise UserError(f"cannot compare {first_label} and {label}: they were evaluated on different data "
                                f"(evaluation split hash {id0['sha256'][:12]} vs {idn['sha256'][:12]}, specs "
                                f"{id0['spec']} vs {idn['spec']}); compare runs of one data set and eval_samples")
        elif (id0["spec"], id0["test"]) != (idn["spec"], idn["test"]):
            raise UserError(f"cannot compare {first_label} and {label}: different data ({id0['spec']}, "
                            f"{id0['test']} test images vs {idn['spec']}, {idn['test']}); compare runs of one data set")
        if id0["samples"] and idn["samples"] and id0["samples"] != idn["samples"]:
            raise UserError(f"cannot compare {first_label} and {label}: accuracy measured on different numbers of "
                            f"images ({sorted(id0['samples'])} vs {sorted(idn['samples'])}); "
                            "set the same data.eval_samples")


def _labels(runs: list[Path]) -> list[str]:
    """Short unique names: the folder name, or more of the path where names repeat."""
    parts = [r.resolve().parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]


def flatten(labelled: list[tuple[str, dict]]) -> list[dict]:
    """One row per measured model: the report's model entry plus its run."""
    rows = []
    for label, rep in labelled:
        for m in rep["models"]:
            lat = m.get("latency_ms") or {}
            size = m.get("size_bytes")
            rows.append({
                "run": label,
                "model": m["name"],
                "format": m["format"],
                "precision": m["precision"],
                "device": m.get("device") or "?",
                "size_kb": None if size is None else size / 1024,
                "params": m.get("params"),
                "macs": m.get("macs"),
                "task": m.get("task", "classification"),
                "score": m.get("score", m.get("accuracy")),
                "accuracy": m.get("accuracy"),
                "metrics": m.get("metrics"),
                "eval_samples": m.get("eval_samples"),
                "top1_ci95": entry_interval(m),
                "p50_ms": lat.get("p50"),
                "p90_ms": lat.get("p90"),
                "peak_mb": m.get("peak_memory_mb"),
                "runtime": m.get("runtime"),
                "path": m.get("path"),
                "front": [],
            })
    return rows


def pareto_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of points no other point beats: lower cost (x) and higher accuracy (y), one strictly."""
    front = set()
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.add(i)
    return front


def mark_fronts(rows: list[dict]) -> None:
    """Add 'latency' / 'size' to row['front'] for rows on that device's Pareto front."""
    for dev in sorted({r["device"] for r in rows}):
        for key, tag in (("p50_ms", "latency"), ("size_kb", "size")):
            cand = [r for r in rows if r["device"] == dev and r[key] is not None and r["score"] is not None]
            for i in pareto_front([(r[key], r["score"]) for r in cand]):
                cand[i]["front"].append(tag)


def _misses(r: dict, b: Budget) -> dict[str, float]:
    """How far a row is from each budget it misses (ms, KB, accuracy points); inf when not measured."""
    out = {}
    for key, limit, sign, name in (("p50_ms", b.max_latency_ms, 1, "latency"), ("size_kb", b.max_size_kb, 1, "size"),
                                   ("score", b.min_accuracy, -1, "accuracy")):
        if limit is None:
            continue
        v = r[key]
        if v is None:
            out[name] = math.inf
        elif sign * (v - limit) > 0:
            out[name] = abs(v - limit)
    return out


def _describe(r: dict) -> str:
    return f"{r['run']}: {r['model']} {r['format']} {r['precision']} on {r['device']}"


def _limit_text(b: Budget, name: str) -> str:
    return {"latency": f"p50 <= {b.max_latency_ms:g} ms" if b.max_latency_ms is not None else "",
            "size": f"size <= {b.max_size_kb:g} KB" if b.max_size_kb is not None else "",
            "accuracy": f"accuracy >= {b.min_accuracy:g}" if b.min_accuracy is not None else ""}[name]


def _gap_text(name: str, gap: float) -> str:
    if math.isinf(gap):
        return f"{name} not measured"
    unit = {"latency": f"{gap:.3f} ms slower", "size": f"{gap:.1f} KB larger",
            "accuracy": f"{100 * gap:.2f} points less accurate"}
    return unit[name]


def choose(rows: list[dict], b: Budget) -> dict:
    """The best row meeting the budget (highest accuracy, ties by lower p50), or why none does."""
    pool = [r for r in rows if b.device is None or r["device"] == b.device]
    if not pool:
        devices = sorted({r["device"] for r in rows})
        raise UserError(f"--device {b.device}: no model was measured on it; the runs have {', '.join(devices)}")
    ok = [r for r in pool if not _misses(r, b) and r["score"] is not None]
    if ok:
        best = min(ok, key=lambda r: (-r["score"], r["p50_ms"] if r["p50_ms"] is not None else math.inf))
        best["best"] = True
        ties = indistinguishable(best, [r for r in ok if r is not best])
        message = (f"best within budget: {_describe(best)} ({score_name(best)} {best['score']:.4f} "
                   f"{ci_text(best['top1_ci95'])}, p50 {fmt_cell(best['p50_ms'], '.3f')} ms, "
                   f"{fmt_cell(best['size_kb'], '.1f')} KB)")
        if ties:
            shown = "; ".join(f"{_describe(r)} ({r['score']:.4f} {ci_text(r['top1_ci95'])}, p={p:.2f})"
                              for r, p in ties[:5])
            message += (f"; not distinguishable on these {best['eval_samples'] or '?'} test images from "
                        f"{len(ties)} other model(s) within the budget (two-proportion test p >= {SIGNIFICANCE}): "
                        f"{shown}{'; ...' if len(ties) > 5 else ''}")
        return {"met": True, "best": best, "message": message,
                "indistinguishable": [{"run": r["run"], "model": r["model"], "format": r["format"],
                                       "precision": r["precision"], "device": r["device"], "score": r["score"],
                                       "p_value": p} for r, p in ties]}
    names = [n for n in ("latency", "size", "accuracy") if _limit_text(b, n)]
    alone = [n for n in names if all(n in _misses(r, b) for r in pool)]
    parts = []
    for n in alone:  # budgets no model meets even alone
        near = min(pool, key=lambda r: _misses(r, b)[n])
        parts.append(f"no model meets {_limit_text(b, n)}; nearest {_describe(near)}, "
                     f"{_gap_text(n, _misses(near, b)[n])}")
    if not alone:  # each budget is met by some model, never all together
        scale = {"latency": b.max_latency_ms or 1, "size": b.max_size_kb or 1, "accuracy": b.min_accuracy or 1}
        near = min(pool, key=lambda r: sum(g / scale[n] for n, g in _misses(r, b).items()))
        gaps = "; ".join(f"{_gap_text(n, g)} than {_limit_text(b, n)}" for n, g in _misses(near, b).items())
        parts.append(f"no model meets {' and '.join(_limit_text(b, n) for n in names)} together; "
                     f"nearest {_describe(near)}: {gaps}")
    return {"met": False, "best": None, "unmet": alone or names, "message": "; ".join(parts)}


def indistinguishable(best: dict, others: list[dict]) -> list[tuple[dict, float]]:
    """The rows whose accuracy the data cannot tell from `best`'s (two-proportion test p >= SIGNIFICANCE);
    top-1 accuracies only (a test of proportions says nothing about mAP)."""
    out = []
    if best.get("task", "classification") != "classification":
        return out
    for r in others:
        if not best.get("eval_samples") or not r.get("eval_samples") or r["score"] is None:
            continue
        p = two_proportion_p(best["score"], best["eval_samples"], r["score"], r["eval_samples"])
        if p >= SIGNIFICANCE:
            out.append((r, p))
    return sorted(out, key=lambda t: -t[1])


def _accuracy_cell(r: dict) -> str:
    ci = ci_text(r.get("top1_ci95"))
    return fmt_cell(r["score"], ".4f") + (f" {ci}" if ci else "")


def table_rows(rows: list[dict]) -> list[list[str]]:
    """Formatted cells in COLUMNS order."""
    return [[r["run"], r["model"], r["format"], r["precision"], r["device"], fmt_cell(r["size_kb"], ".1f"),
             fmt_cell(r["params"], ","), fmt_cell(r["macs"], ","), _accuracy_cell(r),
             fmt_cell(r["p50_ms"], ".3f"), fmt_cell(r["p90_ms"], ".3f"), fmt_cell(r["peak_mb"], ".0f"),
             ",".join(r["front"]) + (" *best*" if r.get("best") else "")] for r in rows]


def plot_device(rows: list[dict], device: str, path: Path) -> None:
    """Accuracy against p50 latency and against size for one device, Pareto fronts drawn as steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["device"] == device and r["score"] is not None]
    name = score_name(rows[0]) if rows else "accuracy"
    ylabel = "top-1 accuracy" if name == "accuracy" else name
    runs = sorted({r["run"] for r in rows})
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    colour = {run: cmap(i % cmap.N) for i, run in enumerate(runs)}
    marker = {"pytorch": "o", "onnx": "s", "tflite": "^", "openvino": "v"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, tag, label in ((axes[0], "p50_ms", "latency", "p50 latency, batch 1 (ms)"),
                                (axes[1], "size_kb", "size", "model file size (KB)")):
        pts = [r for r in rows if r[key] is not None]
        for r in pts:
            on = tag in r["front"]
            if r.get("top1_ci95"):
                y, (lo, hi) = 100 * r["score"], r["top1_ci95"]
                ax.errorbar(r[key], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="none", ecolor=colour[r["run"]],
                            elinewidth=0.7, capsize=2, alpha=0.5)
            ax.scatter(r[key], 100 * r["score"], marker=marker.get(r["format"], "D"), s=70 if on else 30,
                       facecolors=colour[r["run"]] if r["precision"] == "int8" else "none",
                       edgecolors=colour[r["run"]], linewidths=2 if on else 1, alpha=0.9)
        front = sorted((r for r in pts if tag in r["front"]), key=lambda r: r[key])
        if front:
            ax.step([r[key] for r in front], [100 * r["score"] for r in front], where="post", color="black",
                    lw=1, alpha=0.6, label="Pareto front")
            for r in front:
                ax.annotate(f"{r['run']}\n{r['format']} {r['precision']}", (r[key], 100 * r["score"]),
                            fontsize=6, xytext=(4, -8), textcoords="offset points")
        vals = [r[key] for r in pts if r[key] > 0]
        if vals and max(vals) / min(vals) > 20:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
            for set_fmt in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
                set_fmt(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(label)
        ax.set_ylabel(f"{ylabel} (%)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[r], marker="o", ls="", label=r) for r in runs]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="", label=f) for f, m in marker.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"accuracy vs latency and size on {device} (filled: int8, hollow: fp32; large: on the front; "
                 "bars: 95% interval)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(handles) / 4), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _markdown(result: dict, plots: list[str]) -> str:
    md = ["# edgecnn compare", "", f"Runs: {', '.join(result['runs'])}. Evaluation data: {result['data']}.", "",
          markdown_table(COLUMNS, table_rows(result["rows"]))]
    md += ["", "front: on the Pareto front of accuracy against p50 latency (`latency`) or file size (`size`) "
           "for that device. accuracy: test top-1 with its 95% Wilson interval.", ""]
    if result.get("budget"):
        md += [f"**Budget** ({result['budget']['limits']}): {result['budget']['message']}", ""]
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def _html(result: dict, plots: dict[str, bytes]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = []
    for r, cells in zip(result["rows"], table_rows(result["rows"]), strict=True):
        cls = ' class="best"' if r.get("best") else (' class="front"' if r["front"] else "")
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    imgs = "".join(f'<h2>{esc(dev)}</h2><img alt="{esc(dev)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}">' for dev, png in plots.items())
    budget = (f"<p><b>Budget</b> ({esc(result['budget']['limits'])}): {esc(result['budget']['message'])}</p>"
              if result.get("budget") else "")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgecnn compare</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}tr.front{background:#eef6ff}"
            "tr.best{background:#d9f7d9;font-weight:bold}img{max-width:100%}</style></head><body>"
            f"<h1>edgecnn compare</h1><p>Runs: {esc(', '.join(result['runs']))}. Evaluation data: "
            f"{esc(result['data'])}.</p>{budget}<table><tr>{head}</tr>{''.join(body)}</table>"
            "<p>Blue rows are on a Pareto front (accuracy against p50 latency or file size, per device); "
            f"green is the best model within the budget.</p>{imgs}</body></html>\n")


def compare_runs(paths: list[Path], out: Path | None, budget: Budget = Budget()) -> dict:
    """Load, check, tabulate and plot runs; write compare.json/.md/.html into `out` (when given)."""
    if not paths:
        raise UserError("compare: give at least one run directory, e.g. edgecnn compare runs/a runs/b")
    runs = expand_runs(paths)
    labelled = list(zip(_labels(runs), [load_report(r) for r in runs], strict=True))
    check_comparable(labelled)
    rows = flatten(labelled)
    if budget.device is not None and not any(r["device"] == budget.device for r in rows):
        devices = sorted({r["device"] for r in rows})
        raise UserError(f"--device {budget.device}: no model was measured on it; the runs have {', '.join(devices)}")
    mark_fronts(rows)
    ident = _eval_identity(labelled[0][1])
    data = f"{ident['spec']}, {', '.join(str(s) for s in sorted(ident['samples']))} images"
    result: dict = {"runs": [lbl for lbl, _ in labelled], "paths": [str(r) for r in runs], "data": data,
                    "eval_sha256": ident["sha256"], "rows": rows}
    if budget.any() or budget.device:
        limits = ", ".join(t for t in (_limit_text(budget, n) for n in ("latency", "size", "accuracy")) if t)
        limits = (limits + (", " if limits else "") + f"device {budget.device}") if budget.device else limits
        result["budget"] = {"limits": limits or "none", **choose(rows, budget)}
    if out is not None:
        write_outputs(out, result)
    return result


def write_outputs(out: Path, result: dict) -> None:
    """compare.json, compare.md, compare.html and compare-<device>.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, bytes] = {}
    for dev in sorted({r["device"] for r in result["rows"] if r["score"] is not None}):
        png = out / f"compare-{dev.replace('/', '_').replace(':', '_')}.png"
        plot_device(result["rows"], dev, png)
        plots[dev] = png.read_bytes()
    best = result.get("budget", {}).get("best")
    serial = {**result, "budget": {**result["budget"], "best": best and {k: best[k] for k in ("run", "model",
              "format", "precision", "device", "path")}} if result.get("budget") else None}
    atomic_write_json(out / "compare.json", serial)
    names = [f"compare-{d.replace('/', '_').replace(':', '_')}.png" for d in plots]
    atomic_write_text(out / "compare.md", _markdown(result, names))
    atomic_write_text(out / "compare.html", _html(result, plots))

