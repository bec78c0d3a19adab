"""Statistics across seeds on inputs whose answer is known: CI coverage, planted and null effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from backdoor_study import stats


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    true_mean, n_sim = 2.0, 300
    covered = 0
    for i in range(n_sim):
        x = rng.normal(true_mean, 1.0, size=12)
        low, high = stats.bootstrap_mean_ci(x, ci=0.95, n_resamples=999, seed=i)
        assert low < x.mean() < high
        covered += low <= true_mean <= high
    # BCa with n=12 under-covers a little; a broken interval (e.g. the SD mistaken for the SE,
    # or a 50% interval) lands far outside this band.
    assert 0.87 <= covered / n_sim <= 0.99


def test_bootstrap_ci_edge_cases() -> None:
    assert all(np.isnan(stats.bootstrap_mean_ci([0.5])))
    assert all(np.isnan(stats.bootstrap_mean_ci([np.nan, 0.5])))
    assert stats.bootstrap_mean_ci([0.7, 0.7, 0.7]) == (0.7, 0.7)
    low, high = stats.bootstrap_mean_ci([0.1, 0.9])  # two seeds: BCa undefined, percentile used
    assert 0.1 <= low < high <= 0.9


def _rejection_rate(effect: float, n_sim: int = 300, n: int = 5, alpha: float = 0.05) -> float:
    rng = np.random.default_rng(1)
    rejected = 0
    for _ in range(n_sim):
        clean = rng.normal(0.7, 0.05, size=n)
        poisoned = clean + effect + rng.normal(0, 0.03, size=n)
        rejected += stats.paired_test(poisoned, clean)["p_ttest"] < alpha
    return rejected / n_sim


def test_paired_test_finds_a_planted_effect() -> None:
    assert _rejection_rate(effect=0.1) > 0.95
    res = stats.paired_test(np.array([0.9, 0.92, 0.95]), np.array([0.1, 0.05, 0.12]))
    assert res["mean_diff"] == pytest.approx(np.mean([0.8, 0.87, 0.83]))
    assert res["d_z"] > 5 and res["p_ttest"] < 0.01


def test_paired_test_holds_its_level_on_a_null_effect() -> None:
    assert _rejection_rate(effect=0.0) <= 0.09


def test_paired_test_undefined_cases_are_nan() -> None:
    one = stats.paired_test(np.array([0.5]), np.array([0.4]))
    assert one["n_pairs"] == 1 and np.isnan(one["p_ttest"])
    same = stats.paired_test(np.array([0.5, 0.6]), np.array([0.5, 0.6]))
    assert same["mean_diff"] == 0 and np.isnan(same["p_wilcoxon"]) and np.isnan(same["d_z"])
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_test(np.array([0.5, 0.6]), np.array([0.5]))


def test_holm_matches_statsmodels_and_skips_nan() -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03])
    out = stats.holm(p)
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], expected)


def summary_with_planted_effect(n_seeds: int = 4) -> pd.DataFrame:
    """ASR rises with poisoning for `rare_value` only; clean AUROC does not change anywhere."""
    rng = np.random.default_rng(3)
    rows = []
    for trigger, asr_gain in (("rare_value", 0.8), ("missingness", 0.0)):
        for rate in (0.0, 0.05):
            for seed in range(1, n_seeds + 1):
                rows.append(
                    {
                        "kind": "train",
                        "model": "mlp",
                        "trigger": trigger,
                        "poison_rate": rate,
                        "seed": seed,
                        "ASR": 0.1 + (asr_gain if rate else 0) + rng.normal(0, 0.03),
                        "auroc_clean": 0.7 + rng.normal(0, 0.01),
                    }
                )
    return pd.DataFrame(rows)


def test_compare_to_clean_pairs_by_seed_and_flags_only_the_planted_effect() -> None:
    table = summary_with_planted_effect()
    out = stats.compare_to_clean(table, ["ASR", "auroc_clean"]).set_index(["trigger", "metric"])
    assert set(out["n_pairs"]) == {4}
    assert out.loc[("rare_value", "ASR"), "significant"]
    assert out.loc[("rare_value", "ASR"), "mean_diff"] == pytest.approx(0.8, abs=0.06)
    assert not out.loc[("missingness", "ASR"), "significant"]
    assert not out.loc[("rare_value", "auroc_clean"), "significant"]
    assert (out["p_ttest_holm"] >= out["p_ttest"]).all()


def test_study_stats_one_row_per_config_and_metric_with_tests_on_poisoned_rows() -> None:
    table = summary_with_planted_effect(n_seeds=3)
    table = pd.concat([table, table.iloc[:1].assign(kind="detect", detector="spectral")])
    out = stats.study_stats(table, ["ASR", "auroc_clean"], n_resamples=500)
    assert len(out) == 2 * 2 * 2  # triggers x rates x metrics; the detect row is not a training run
    assert (out["n"] == 3).all()
    assert out.loc[out["poison_rate"] == 0, "p_ttest"].isna().all()
    assert out.loc[out["poison_rate"] > 0, "p_ttest"].notna().all()
    assert ((out["ci_low"] <= out["mean"]) & (out["mean"] <= out["ci_high"])).all()
    md = stats.markdown_table(out)
    assert md.splitlines()[0].startswith("| trigger") and "p (t, Holm)" in md
    assert len(md.strip().splitlines()) == 2 + len(out)


def test_compare_to_clean_names_a_missing_column() -> None:
    with pytest.raises(KeyError, match="'seed'"):
        stats.compare_to_clean(pd.DataFrame({"poison_rate": [0.0]}), ["ASR"])
