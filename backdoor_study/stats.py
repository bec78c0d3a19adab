"""Statistics across seeds for a study's summary table (``summarize``'s ``summary.csv``).

Two questions, answered with SciPy / statsmodels (nothing they provide is written here):

- how large is a metric for one config, over its seeds: mean, standard deviation and a 95%
  bootstrap CI of the mean (``scipy.stats.bootstrap``, BCa, percentile where BCa is undefined);
- does poisoning change it: each poisoned config (``poison_rate > 0``) against its clean baseline
  (the same config at ``poison_rate == 0``), paired by seed, with a paired t-test
  (``scipy.stats.ttest_rel``) and a Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), Holm
  correction over every comparison of one metric (``statsmodels``' ``multipletests``) and the
  paired effect size Cohen's d_z (mean of the paired differences over their standard deviation).

With 2-3 seeds an exact Wilcoxon test cannot reach p < 0.25; the t-test is the one to read then.

This module reads a table and returns tables; it writes no files (``report`` does).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from backdoor_study.metrics import summarize_seeds

NAN = float("nan")
# Columns that identify one experimental config; its rows differ only by seed. Those absent from
# a table are ignored, so a study of one data set or one attack needs no placeholder columns.
CONFIG_COLUMNS = (
    "kind",
    "data",
    "model",
    "attack",
    "trigger",
    "poison_source",
    "poison_rate",
    "detector",
    "epochs",
    "selection",
)
# Metrics compared against the clean baseline by default (those present in the table).
TESTED_METRICS = ("ASR", "ASR_flip", "auroc_clean", "auprc_clean", "ece_clean", "confidence_shift")
PAIRED_TESTS = ("ttest", "wilcoxon")


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    ci: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI (low, high) of the mean of ``values`` (NaN dropped).

    BCa (``scipy.stats.bootstrap``'s default); where BCa is undefined (too few distinct values for
    its jackknife) the percentile interval. (NaN, NaN) with fewer than two values; (m, m) when all
    values equal m (every resample has mean m).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size < 2:
        return NAN, NAN
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning from BCa
            res = sps.bootstrap(
                (x,),
                np.mean,
                n_resamples=n_resamples,
                confidence_level=ci,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return NAN, NAN


def config_columns(table: pd.DataFrame) -> list[str]:
    """The CONFIG_COLUMNS present in ``table``."""
    return [c for c in CONFIG_COLUMNS if c in table.columns]


def describe_over_seeds(
    table: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: Sequence[str] | None = None,
    ci: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (config, metric): ``n``, ``mean``, ``std`` and bootstrap ``ci_low``/``ci_high``.

    ``by`` defaults to :func:`config_columns`; metrics absent from ``table`` are skipped.
    """
    by = list(by) if by is not None else config_columns(table)
    metrics = [m for m in metrics if m in table.columns]
    rows = []
    for key, group in table.groupby(by, sort=True, dropna=False):
        labels = dict(zip(by, key))
        for m in metrics:
            values = pd.to_numeric(group[m], errors="coerce").to_numpy(dtype=np.float64)
            if np.isnan(values).all():
                continue
            s = summarize_seeds(values, ci=ci)
            low, high = bootstrap_mean_ci(values, ci=ci, n_resamples=n_resamples, seed=seed)
            rows.append(
                {
                    **labels,
                    "metric": m,
                    "n": s["n"],
                    "mean": s["mean"],
                    "std": s["std"],
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=[*by, "metric", "n", "mean", "std", "ci_low", "ci_high"])


def paired_test(poisoned: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Paired comparison of two equal-length samples (one pair per seed).

    ``mean_diff`` (poisoned - clean), Cohen's ``d_z`` (mean difference / SD of the differences),
    ``t``/``p_ttest`` (``scipy.stats.ttest_rel``) and ``p_wilcoxon`` (``scipy.stats.wilcoxon``,
    exact for small n). NaN where a test is undefined (fewer than two pairs, or identical pairs).
    """
    poisoned = np.asarray(poisoned, dtype=np.float64)
    clean = np.asarray(clean, dtype=np.float64)
    if poisoned.shape != clean.shape:
        raise ValueError(f"paired samples differ in length: {poisoned.shape} vs {clean.shape}")
    keep = ~(np.isnan(poisoned) | np.isnan(clean))
    poisoned, clean = poisoned[keep], clean[keep]
    diff = poisoned - clean
    out = {
        "n_pairs": int(diff.size),
        "mean_diff": float(diff.mean()) if diff.size else NAN,
        "d_z": NAN,
        "t": NAN,
        "p_ttest": NAN,
        "p_wilcoxon": NAN,
    }
    if diff.size < 2 or np.all(diff == diff[0]):
        if diff.size >= 2 and diff[0] != 0:  # a constant nonzero shift: infinitely large effect
            out["d_z"] = float(np.sign(diff[0]) * np.inf)
        return out
    sd = float(diff.std(ddof=1))
    out["d_z"] = float(diff.mean() / sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = sps.ttest_rel(poisoned, clean)
        out["t"], out["p_ttest"] = float(t.statistic), float(t.pvalue)
        if np.any(diff != 0):
            out["p_wilcoxon"] = float(sps.wilcoxon(poisoned, clean).pvalue)
    return out


def holm(p_values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values (``statsmodels``' ``multipletests``); NaN entries stay NaN and are
    not counted as tests."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, NAN)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def compare_to_clean(
    table: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Each poisoned config (``poison_rate > 0``) against its clean baseline, paired by ``seed``.

    The baseline of a config is the row group with the same ``by`` values at ``poison_rate == 0``.
    One row per (poisoned config, metric) with :func:`paired_test`'s columns, ``baseline_mean``,
    and Holm-adjusted ``p_ttest_holm`` / ``p_wilcoxon_holm`` over every comparison of that metric;
    ``significant`` is ``p_ttest_holm < alpha``.
    """
    for col in ("poison_rate", "seed"):
        if col not in table.columns:
            raise KeyError(f"compare_to_clean needs a {col!r} column; the table has {list(table)}")
    by = [c for c in (by if by is not None else config_columns(table)) if c != "poison_rate"]
    metrics = [m for m in metrics if m in table.columns]
    rate = pd.to_numeric(table["poison_rate"])
    clean = table[rate == 0]
    poisoned = table[rate > 0]
    rows = []
    for key, group in poisoned.groupby([*by, "poison_rate"], sort=True, dropna=False):
        labels = dict(zip([*by, "poison_rate"], key))
        base = clean
        for c in by:
            base = base[base[c].isna()] if pd.isna(labels[c]) else base[base[c] == labels[c]]
        if base.empty:
            continue
        pairs = group.merge(base, on="seed", suffixes=("", "_clean"))
        for m in metrics:
            res = paired_test(
                pd.to_numeric(pairs[m], errors="coerce").to_numpy(),
                pd.to_numeric(pairs[f"{m}_clean"], errors="coerce").to_numpy(),
            )
            if res["n_pairs"] == 0:
                continue
            mean_p = float(np.nanmean(pd.to_numeric(pairs[m], errors="coerce")))
            rows.append(
                {
                    **labels,
                    "metric": m,
                    "mean": mean_p,
                    "baseline_mean": mean_p - res["mean_diff"],
                    **res,
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    for test in PAIRED_TESTS:
        out[f"p_{test}_holm"] = NAN
        for _, idx in out.groupby("metric").groups.items():
            out.loc[idx, f"p_{test}_holm"] = holm(out.loc[idx, f"p_{test}"], alpha)
    out["significant"] = out["p_ttest_holm"] < alpha
    return out


def study_stats(
    table: pd.DataFrame,
    metrics: Sequence[str] = TESTED_METRICS,
    *,
    ci: float = 0.95,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`describe_over_seeds` of the training runs joined with :func:`compare_to_clean`:
    one row per (config, metric); the test columns are empty for clean configs."""
    train = table[table["kind"] == "train"] if "kind" in table.columns else table
    train = train.drop(columns=[c for c in ("kind", "detector") if c in train.columns])
    described = describe_over_seeds(train, metrics, ci=ci, n_resamples=n_resamples, seed=seed)
    tests = compare_to_clean(train, metrics, alpha=alpha)
    if tests.empty:
        return described
    keys = [*config_columns(train), "metric"]
    tests = tests.drop(columns=["mean"])
    return described.merge(tests, on=keys, how="left")


def markdown_table(stats: pd.DataFrame, *, digits: int = 3) -> str:
    """``stats`` as a Markdown table: mean [CI] per config and metric, with the paired test."""
    if stats.empty:
        return "_no statistics: the summary holds no completed training runs_\n"
    shown = pd.DataFrame({c: stats[c] for c in config_columns(stats) if stats[c].nunique() > 1})
    shown["metric"] = stats["metric"]
    shown["n"] = stats["n"]
    shown["mean [95% CI]"] = [
        f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        if np.isfinite(lo)
        else f"{m:.{digits}f}"
        for m, lo, hi in zip(stats["mean"], stats["ci_low"], stats["ci_high"])
    ]
    if "mean_diff" in stats.columns:
        shown["Δ vs clean"] = stats["mean_diff"].map(_fmt(digits))
        shown["d_z"] = stats["d_z"].map(_fmt(2))
        shown["p (t, Holm)"] = stats["p_ttest_holm"].map(_fmt_p)
        shown["p (Wilcoxon, Holm)"] = stats["p_wilcoxon_holm"].map(_fmt_p)
    return shown.to_markdown(index=False, disable_numparse=True) + "\n"


def _fmt(digits: int):
    return lambda v: "" if pd.isna(v) else f"{v:+.{digits}f}"


def _fmt_p(p: float) -> str:
    if pd.isna(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
