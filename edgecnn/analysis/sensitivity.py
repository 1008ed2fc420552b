"""The per-layer int8 sensitivity table of a run (CSV and JSON) and its plot, and report.md's lines on it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from edgecnn.core.artifacts import atomic_path, atomic_write_json, atomic_write_text

COLUMNS = ("rank", "layer", "op", "score_drop", "output_sqnr_db", "activation_sqnr_db", "onnx_nodes")


def write_sensitivity(rows: list[dict], folder: Path, title: str) -> dict:
    """sensitivity.csv, sensitivity.json and sensitivity.png in `folder`; their names."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([" ".join(r[c]) if c == "onnx_nodes" else ("" if r[c] is None else r[c]) for c in COLUMNS])
    atomic_write_text(folder / "sensitivity.csv", buf.getvalue())
    atomic_write_json(folder / "sensitivity.json", rows)
    plot_sensitivity(rows, folder / "sensitivity.png", title)
    return {"table": "sensitivity.csv", "json": "sensitivity.json", "plot": "sensitivity.png"}


def plot_sensitivity(rows: list[dict], path: Path, title: str) -> None:
    """One bar per layer (execution order): the output SQNR with only that layer int8; the kept-float ones marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 4))
    xs = range(len(rows))
    colours = ["tab:red" if r.get("kept_float") else "tab:blue" for r in rows]
    ax.bar(xs, [r["output_sqnr_db"] for r in rows], color=colours)
    ax.set_xticks(list(xs), [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("logit SQNR vs fp32, only this layer int8 (dB)")
    ax.set_title(f"{title}: int8 sensitivity per layer (lower = more sensitive; red: kept in float)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def sensitivity_lines(stage: dict | None, stage_dir: str = "quantize") -> list[str]:
    """report.md lines: the layers each format kept in float and the sensitivity plot, when the stage has them."""
    if not stage:
        return []
    lines = []
    for fmt, f in (stage.get("files") or {}).items():
        if f.get("float_layers"):
            lines.append(f"Mixed precision ({fmt}): {len(f['float_layers'])} layer(s) kept in float to meet the "
                         f"budget: {', '.join(f['float_layers'])}.")
    s = stage.get("sensitivity")
    if s:
        worst = ", ".join(f"{r['layer']} ({r['output_sqnr_db']:.1f} dB)" for r in s["most_sensitive"])
        images = f"{s['images']:,} " if s.get("images") else ""
        lines += [f"int8 sensitivity per layer ({s['layers']} layers, {images}{s['decision_split']} images, "
                  f"`{stage_dir}/{s['table']}`): most sensitive {worst}.", "",
                  f"![int8 sensitivity]({stage_dir}/{s['plot']})"]
    return lines
