"""``study=data_quantity_quality``: how much more data a model needs when the data gets worse.

For each seed (its own 70/30 split), nested stratified subsets of the training split at every
``curve.sizes`` fraction are poisoned at every ``curve.levels`` level (``poison_dataset``, so level
0 is the clean subset itself) and fitted (``fit_and_score``): test accuracy vs training-set size,
one learning curve per level.

The data multiplier answers "how many times more data does a model trained at this corruption
level need to reach the accuracy the clean model reaches with ``curve.reference_size`` of the
training split?", measured, not modelled: the target is the clean mean curve at the reference
size; the size a curve needs is where its mean curve first reaches the target (linear in log size
between measured sizes; infinite when it never does within the measured range); the multiplier is
that size over the size the clean curve needs (so level 0 is exactly 1). 95% CIs resample seeds
(percentile bootstrap over whole seeds, ``curve.bootstrap`` resamples).

Run directory ``{runs_root}/data_quantity_quality/{data}/{model}/{attack}/``:
``learning_curves.csv`` (one row per seed x size x level), ``multipliers.csv``,
``learning_curves.png``, and ``metrics.json`` last.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from backdoor_study import tracking
from backdoor_study.classic.core import as_table, fit_and_score, load_table
from backdoor_study.classic.runner import begin, finish_run_dir, start_run_dir
from backdoor_study.data.splits import holdout_split
from backdoor_study.metrics import summarize_seeds
from backdoor_study.poison import poison_dataset
from backdoor_study.utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger("backdoor_study.classic")

CURVES_FILE = "learning_curves.csv"
MULTIPLIERS_FILE = "multipliers.csv"


def nested_subsets(
    train_idx: np.ndarray, y: np.ndarray, fractions: list[float], seed: int
) -> dict[float, np.ndarray]:
    """Sorted positions of ``train_idx``'s stays for each fraction: stratified (each class keeps
    its share, at least 2 rows) and nested (a smaller subset is inside every larger one)."""
    rng = np.random.default_rng([int(seed), 0x5A3])
    labels = y[train_idx]
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    out = {}
    for f in fractions:
        take = [idx[: max(2, int(round(f * idx.size)))] for idx in order.values()]
        out[f] = np.sort(train_idx[np.concatenate(take)])
    return out


def learning_curves(cfg: DictConfig) -> pd.DataFrame:
    """Test accuracy for every seed x size fraction x poison level (one fit each)."""
    table = load_table(cfg.data)
    ds = table.dataset
    curve = cfg.curve
    sizes = sorted(float(f) for f in curve.sizes)
    rows = []
    for seed in range(int(curve.seeds)):
        train_idx, test_idx = holdout_split(ds, float(cfg.test_size), seed)
        for frac, subset in nested_subsets(train_idx, ds.y, sizes, seed).items():
            for level in curve.levels:
                result = poison_dataset(
                    ds,
                    subset,
                    attack_cfg=cfg.attack,
                    trigger_cfg=None,
                    poison_rate=float(level),
                    seed=seed,
                )
                poisoned = as_table(result.dataset) if level > 0 else table
                _, m = fit_and_score(
                    cfg.model,
                    poisoned.x[subset],
                    poisoned.y[subset],
                    table.x[test_idx],
                    table.y[test_idx],
                    n_classes=ds.n_classes,
                    seed=seed,
                    class_weighting=bool(cfg.class_weighting),
                )
                rows.append(
                    {
                        "seed": seed,
                        "size_fraction": frac,
                        "n_train": int(subset.size),
                        "level": float(level),
                        "n_poisoned": int(result.poisoned_indices.size),
                        "acc_test": m["acc_test"],
                        "balanced_acc_test": m["balanced_acc_test"],
                    }
                )
    return pd.DataFrame(rows)


def needed_size(sizes: np.ndarray, acc: np.ndarray, target: float) -> float:
    """The smallest training size at which the curve (``acc`` at increasing ``sizes``, linear in
    log size between points) reaches ``target``; inf when it never does."""
    for i in range(sizes.size):
        if acc[i] >= target:
            if i == 0:
                return float(sizes[0])
            lo, hi = np.log(sizes[i - 1]), np.log(sizes[i])
            t = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(np.exp(lo + t * (hi - lo)))
    return float("inf")


def _multipliers_of(mean_curves: pd.DataFrame, reference_n: float) -> dict[float, float]:
    """``mean_curves``: index n_train (increasing), one column per level (0.0 included)."""
    sizes = mean_curves.index.to_numpy(dtype=np.float64)
    clean = mean_curves[0.0].to_numpy()
    target = float(mean_curves.loc[reference_n, 0.0])
    clean_n = needed_size(sizes, clean, target)
    return {
        float(level): needed_size(sizes, mean_curves[level].to_numpy(), target) / clean_n
        for level in mean_curves.columns
    }


def data_multipliers(
    curves: pd.DataFrame, reference_fraction: float, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per level: the data multiplier (see the module docstring) from the seed-mean curves, and a
    95% percentile CI from ``n_boot`` resamples of whole seeds; ``reached_fraction`` is the share
    of resamples whose curve reached the target within the measured sizes."""
    reference_n = float(curves.loc[curves.size_fraction == reference_fraction, "n_train"].iloc[0])
    per_seed = curves.pivot_table(index=["seed", "n_train"], columns="level", values="acc_test")
    seeds = per_seed.index.get_level_values("seed").unique().to_numpy()
    point = _multipliers_of(per_seed.groupby(level="n_train").mean(), reference_n)
    rng = np.random.default_rng(seed)
    boots = {level: [] for level in point}
    for _ in range(n_boot):
        pick = rng.choice(seeds, size=seeds.size, replace=True)
        sample = pd.concat([per_seed.xs(s, level="seed") for s in pick])
        for level, value in _multipliers_of(sample.groupby(level=0).mean(), reference_n).items():
            boots[level].append(value)
    target = float(per_seed.groupby(level="n_train").mean().loc[reference_n, 0.0])
    rows = []
    for level, value in point.items():
        b = np.asarray(boots[level], dtype=np.float64)
        low, high = (
            np.quantile(b, [0.025, 0.975], method="inverted_cdf") if b.size else (np.nan, np.nan)
        )
        rows.append(
            {
                "level": level,
                "multiplier": value,
                "ci_low": float(low),
                "ci_high": float(high),
                "reached_fraction": float(np.isfinite(b).mean()) if b.size else np.nan,
                "reference_n": reference_n,
                "target_acc": target,
                "max_measured_multiplier": float(curves.n_train.max()) / reference_n,
            }
        )
    return pd.DataFrame(rows)


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and t-interval 95% CI of test accuracy over seeds, per level and size."""
    rows = []
    for (level, n), group in curves.groupby(["level", "n_train"]):
        s = summarize_seeds(group.acc_test.to_numpy())
        rows.append(
            {"level": level, "n_train": n, **{k: s[k] for k in ("mean", "ci_low", "ci_high", "n")}}
        )
    return pd.DataFrame(rows)


def plot_learning_curves(curves: pd.DataFrame, multipliers: pd.DataFrame, title: str) -> Any:
    """Test accuracy vs training-set size (log), one line (mean, 95% CI band) per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = curve_summary(curves)
    fig, ax = plt.subplots(figsize=(6, 4))
    for level, group in summary.groupby("level"):
        m = multipliers.set_index("level").loc[level, "multiplier"]
        label = (
            f"{level:.0%} poisoned (x{m:.2f} data)" if np.isfinite(m) else f"{level:.0%} (never)"
        )
        ax.plot(group.n_train, group["mean"], marker="o", label=label)
        ax.fill_between(group.n_train, group.ci_low, group.ci_high, alpha=0.2)
    ref = multipliers.iloc[0]
    ax.axhline(ref.target_acc, color="grey", ls="--", lw=1)
    ax.axvline(ref.reference_n, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("test accuracy (mean, 95% CI over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_curves(cfg: DictConfig) -> dict[str, Any]:
    with begin(cfg) as (run_dir, work_dir, digest, ident, skipped):
        if skipped is not None:
            return skipped
        with tracking.start(cfg, "classic", run_dir, config_digest=digest) as tracker:
            started = time.time()
            curves = learning_curves(cfg)
            multipliers = data_multipliers(
                curves, float(cfg.curve.reference_size), n_boot=int(cfg.curve.bootstrap)
            )
            title = f"{cfg.data.name} {cfg.model.name} {cfg.attack.name}: data quantity vs quality"
            fig = plot_learning_curves(curves, multipliers, title)
            metadata = start_run_dir(cfg, work_dir, digest, ident, {"name": str(cfg.data.name)})
            atomic_write_text(work_dir / CURVES_FILE, curves.to_csv(index=False))
            atomic_write_text(work_dir / MULTIPLIERS_FILE, multipliers.to_csv(index=False))
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            atomic_write_bytes(work_dir / "learning_curves.png", buf.getvalue())
            metrics: dict[str, Any] = {"n_fits": int(len(curves))}
            for row in multipliers.itertuples():
                for key in ("multiplier", "ci_low", "ci_high", "reached_fraction"):
                    name = "multiplier" if key == "multiplier" else f"multiplier_{key}"
                    metrics[f"{name}_{row.level:g}"] = float(getattr(row, key))
            metrics["reference_n"] = float(multipliers.reference_n.iloc[0])
            metrics["target_acc"] = float(multipliers.target_acc.iloc[0])
            finish_run_dir(work_dir, metadata, metrics, started)
            tracker.log_final(metrics)
            tracker.log_figure(fig, "learning_curves")
            tracker.log_artifacts([work_dir / CURVES_FILE, work_dir / MULTIPLIERS_FILE])
            import matplotlib.pyplot as plt

            plt.close(fig)
        log.info("data quantity vs quality: %s", run_dir)
        return metrics
