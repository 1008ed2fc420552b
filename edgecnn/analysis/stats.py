"""Uncertainty of accuracies measured on a finite test set: Wilson intervals and a two-proportion test."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(accuracy: float | None, n: int | None, z: float = Z95) -> list[float] | None:
    """The 95% Wilson score interval [lo, hi] of a top-1 accuracy measured on `n` images; None without data."""
    if accuracy is None or not n or math.isnan(accuracy):
        return None
    k = round(accuracy * n)  # the accuracy is k/n, measured
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]  # exact at k = 0 and k = n


def classification_fields(accuracy: float | None, n: int | None) -> dict:
    """A classification model entry's task, score and metrics (top-1 with its 95% interval)."""
    return {
        "task": "classification",
        "score": accuracy,
        "metrics": {"top1": accuracy, "top1_ci95": wilson_interval(accuracy, n)},
    }


def two_proportion_p(a: float, n_a: int, b: float, n_b: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test that accuracies a (of n_a) and b (of n_b) are equal."""
    k_a, k_b = round(a * n_a), round(b * n_b)
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0 if k_a * n_b == k_b * n_a else 0.0
    zscore = abs(k_a / n_a - k_b / n_b) / se
    return math.erfc(zscore / math.sqrt(2))


def ci_text(interval: list[float] | None, digits: int = 3) -> str:
    """`[0.951, 0.972]`, or '' without an interval."""
    return "" if not interval else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def entry_interval(entry: dict) -> list[float] | None:
    """A report model entry's 95% top-1 interval (recorded, or from its accuracy and eval_samples)."""
    recorded = (entry.get("metrics") or {}).get("top1_ci95")
    return recorded or wilson_interval(entry.get("accuracy"), entry.get("eval_samples"))
