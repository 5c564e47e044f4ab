"""The statistics of a comparison: per arm mean ± standard deviation over seeds, and per arm the
difference to a baseline arm paired by seed, with a 95% t interval.

Pure numbers (no Ray): ``rows`` are one dict per finished trial, ``{"arm", "seed", <metric>: value}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

# (reported metric, column title): the best epoch's and the last epoch's validation, and the test
# split (evaluated with the best checkpoint)
METRICS = (("best_val_clip_accuracy", "best val"), ("val_clip_accuracy", "last val"), ("test_clip_accuracy", "test"))
LEVEL = 0.95


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation (n - 1); NaN for one value
    n: int


@dataclass(frozen=True)
class Difference:
    mean: float  # arm - baseline, averaged over the seeds both have
    low: float  # 95% interval: mean ± t(0.975, n - 1) * sd / sqrt(n); NaN for fewer than 2 pairs
    high: float
    n: int  # pairs


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (SciPy, which MLflow needs)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def spread(values: Iterable[float]) -> Spread:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return Spread(math.nan, math.nan, 0)
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return Spread(mean, std, len(xs))


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL) -> Difference:
    """``arm - baseline`` over the seeds both have a value for, with a ``level`` t interval."""
    seeds = sorted(s for s in arm if s in baseline and _finite(arm[s]) and _finite(baseline[s]))
    diffs = [float(arm[s]) - float(baseline[s]) for s in seeds]
    d = spread(diffs)
    if d.n < 2:
        return Difference(d.mean, math.nan, math.nan, d.n)
    half = t_quantile(0.5 + level / 2, d.n - 1) * d.std / math.sqrt(d.n)
    return Difference(d.mean, d.mean - half, d.mean + half, d.n)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def by_seed(rows: Iterable[Mapping], arm: str, metric: str) -> dict[int, float]:
    return {int(r["seed"]): r[metric] for r in rows if r["arm"] == arm and _finite(r.get(metric))}


def comparison(rows: list[Mapping], arms: list[str], baseline: str) -> list[dict]:
    """One dict per arm: ``arm``, ``seeds`` (finished), and per metric ``<metric>_mean``,
    ``<metric>_std`` and, against ``baseline``, ``<metric>_diff``, ``_diff_low``, ``_diff_high``."""
    out = []
    for arm in arms:
        row: dict = {
            "arm": arm,
            "baseline": arm == baseline,
            "seeds": len({int(r["seed"]) for r in rows if r["arm"] == arm and _finite(r.get(METRICS[0][0]))}),
        }
        for metric, _ in METRICS:
            s = spread(by_seed(rows, arm, metric).values())
            d = paired_difference(by_seed(rows, arm, metric), by_seed(rows, baseline, metric))
            row.update(
                {
                    f"{metric}_mean": s.mean,
                    f"{metric}_std": s.std,
                    f"{metric}_diff": d.mean,
                    f"{metric}_diff_low": d.low,
                    f"{metric}_diff_high": d.high,
                    f"{metric}_pairs": d.n,
                }
            )
        out.append(row)
    return out


def _num(x: float, signed: bool = False) -> str:
    return "n/a" if x != x else (f"{x:+.3f}" if signed else f"{x:.3f}")


def format_table(table: list[dict], baseline: str, seeds: int, first_seed: int = 0) -> str:
    """The table printed at the end and logged with the parent run."""
    width = max(len("arm"), *(len(r["arm"]) for r in table)) + 2
    lines = [
        f"{len(table)} arms x {seeds} seeds (train.seed {first_seed}..{first_seed + seeds - 1}); mean ± std over seeds",
        f"{'arm':<{width}}{'seeds':>5}  " + "".join(f"{title:>17}" for _, title in METRICS),
    ]
    for r in table:
        cells = "".join(f"{_num(r[f'{m}_mean']) + ' ± ' + _num(r[f'{m}_std']):>17}" for m, _ in METRICS)
        lines.append(f"{r['arm']:<{width}}{r['seeds']:>5}  {cells}")
    lines.append(f"paired difference to the baseline {baseline!r} (same seeds): mean [{LEVEL:.0%} t interval]")
    lines.append(f"{'arm':<{width}}{'pairs':>5}  " + "".join(f"{title:>26}" for _, title in METRICS))
    for r in table:
        if r["baseline"]:
            continue
        cells = "".join(
            f"{_num(r[f'{m}_diff'], True) + ' [' + _num(r[f'{m}_diff_low'], True) + ', ' + _num(r[f'{m}_diff_high'], True) + ']':>26}"
            for m, _ in METRICS
        )
        lines.append(f"{r['arm']:<{width}}{r[f'{METRICS[-1][0]}_pairs']:>5}  {cells}")
    return "\n".join(lines)


def plot_comparison(table: list[dict], baseline: str, path: Path) -> Path:
    """Per metric, each arm's mean ± std; and each arm's paired difference to the baseline with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(table) + 2.5), sharey=True)
    ys = list(range(len(table)))
    for k, (metric, title) in enumerate(METRICS):
        off = (k - 1) * 0.2
        axes[0].errorbar(
            [r[f"{metric}_mean"] for r in table],
            [y + off for y in ys],
            xerr=[0 if r[f"{metric}_std"] != r[f"{metric}_std"] else r[f"{metric}_std"] for r in table],
            fmt="o",
            capsize=3,
            label=title,
        )
        diffs = [r[f"{metric}_diff"] for r in table]
        err = [
            [
                max(d - r[f"{metric}_diff_low"], 0) if r[f"{metric}_diff_low"] == r[f"{metric}_diff_low"] else 0
                for d, r in zip(diffs, table)
            ],
            [
                max(r[f"{metric}_diff_high"] - d, 0) if r[f"{metric}_diff_high"] == r[f"{metric}_diff_high"] else 0
                for d, r in zip(diffs, table)
            ],
        ]
        axes[1].errorbar(diffs, [y + off for y in ys], xerr=err, fmt="o", capsize=3, label=title)
    axes[0].set_yticks(ys, [r["arm"] for r in table])
    axes[0].set_xlabel("accuracy (mean ± std over seeds)")
    axes[1].axvline(0, color="grey", lw=1)
    axes[1].set_xlabel(f"paired difference to {baseline} ({LEVEL:.0%} t interval)")
    axes[0].legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
