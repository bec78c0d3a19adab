"""The classic sklearn study: one run per config into a run directory, poisoning that behaves,
sanitisation that finds feature noise, and bad input refused with the key and the choices."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig
from scipy import stats

from backdoor_study.classic import run
from backdoor_study.classic.__main__ import CLASSIC_CONF_DIR
from backdoor_study.classic.core import as_table, fit_and_score, load_table
from backdoor_study.config import CONF_DIR, ConfigError
from backdoor_study.data.schema import DataValidationError
from backdoor_study.data.sklearn_tables import load_table as load_sklearn_table
from backdoor_study.data.splits import holdout_split
from backdoor_study.rundir import RunDirError
from backdoor_study.utils import read_json
from tests.conftest import REPO_ROOT


def classic_cfg(tmp_path, *overrides: str) -> DictConfig:
    with initialize_config_dir(str(CLASSIC_CONF_DIR), version_base="1.3"):
        return compose(
            "classic", overrides=[f"runs_root={tmp_path}", "save_model=false", *overrides]
        )


def test_single_run_writes_the_run_directory_and_skips_a_rerun(tmp_path):
    cfg = classic_cfg(
        tmp_path,
        "data=iris",
        "model=logreg",
        "attack=feature_noise",
        "poison_rate=0.1",
        "seed=0",
        "save_model=true",
    )
    metrics = run(cfg)
    run_dir = tmp_path / "iris" / "logreg" / "feature_noise" / "0.1" / "seed_0"
    for name in (
        "config_resolved.yaml",
        "run_metadata.json",
        "split.json",
        "poisoned_indices.npy",
        "poison.json",
        "confusion_matrix.png",
        "model/MLmodel",
        "metrics.json",
    ):
        assert (run_dir / name).exists(), name
    assert read_json(run_dir / "metrics.json") == metrics
    for key in (
        "acc_train",
        "acc_test",
        "balanced_acc_test",
        "precision_macro_test",
        "recall_weighted_test",
        "f1_weighted_test",
        "train_test_gap",
    ):
        assert 0.0 <= metrics[key] <= 1.0 or key == "train_test_gap", key
    assert metrics["train_test_gap"] == pytest.approx(metrics["acc_train"] - metrics["acc_test"])
    # 70/30 split of 150 rows; 10% of the 105 training rows poisoned
    assert (metrics["n_train"], metrics["n_test"], metrics["n_poisoned"]) == (105, 45, 10)
    assert np.load(run_dir / "poisoned_indices.npy").size == 10
    assert read_json(run_dir / "run_metadata.json")["status"] == "complete"

    import mlflow.sklearn

    model = mlflow.sklearn.load_model(str(run_dir / "model"))
    ds = load_sklearn_table("iris")
    _, test_idx = holdout_split(ds, 0.3, 0)
    pred = model.predict(ds.static_num[test_idx])
    assert np.mean(pred == ds.y[test_idx]) == pytest.approx(metrics["acc_test"])

    again = run(cfg)
    assert again.pop("skipped") is True and again == metrics


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    run(classic_cfg(tmp_path, "poison_rate=0.1"))
    with pytest.raises(RunDirError, match="attack.noise_std"):
        run(classic_cfg(tmp_path, "poison_rate=0.1", "attack.noise_std=3.0"))
    assert run(classic_cfg(tmp_path, "poison_rate=0.1", "attack.noise_std=3.0", "overwrite=true"))


def test_overwrite_that_fails_leaves_the_old_run_intact(tmp_path, monkeypatch):
    """overwrite=true builds the new run beside the old one: a failure mid-run loses nothing."""
    import backdoor_study.classic.runner as runner

    first = run(classic_cfg(tmp_path, "poison_rate=0.1"))
    run_dir = next(tmp_path.rglob("metrics.json")).parent
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure while fitting")

    monkeypatch.setattr(runner, "fit_and_score", broken)
    with pytest.raises(RuntimeError, match="injected"):
        run(classic_cfg(tmp_path, "poison_rate=0.1", "attack.noise_std=3.0", "overwrite=true"))
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before
    assert read_json(run_dir / "metrics.json")["acc_test"] == first["acc_test"]
    monkeypatch.undo()
    replaced = run(
        classic_cfg(tmp_path, "poison_rate=0.1", "attack.noise_std=3.0", "overwrite=true")
    )
    assert not replaced.get("skipped")
    assert not list(run_dir.parent.glob(".*.new")) and not list(run_dir.parent.glob(".*.old"))
    assert read_json(run_dir / "run_metadata.json")["config_identity"]["attack"]["noise_std"] == 3.0


@pytest.mark.parametrize("model", ["logreg", "random_forest", "decision_tree", "svm"])
def test_level_zero_equals_the_clean_run_exactly(tmp_path, model):
    """poison_rate=0 under either attack is the clean model: same metrics as fitting the clean
    split directly."""
    flip = run(classic_cfg(tmp_path, f"model={model}", "attack=label_flip", "seed=3"))
    noise = run(classic_cfg(tmp_path, f"model={model}", "attack=feature_noise", "seed=3"))
    assert flip["n_poisoned"] == noise["n_poisoned"] == 0
    table = load_table(classic_cfg(tmp_path).data)
    train_idx, test_idx = holdout_split(table.dataset, 0.3, 3)
    _, clean = fit_and_score(
        classic_cfg(tmp_path, f"model={model}").model,
        table.x[train_idx],
        table.y[train_idx],
        table.x[test_idx],
        table.y[test_idx],
        n_classes=table.dataset.n_classes,
        seed=3,
    )
    keys = [k for k in clean]
    assert {k: flip[k] for k in keys} == {k: noise[k] for k in keys} == clean


def test_half_the_labels_flipped_lowers_mean_iris_accuracy_clearly(tmp_path):
    seeds = range(6)
    acc = {
        rate: np.array(
            [
                run(
                    classic_cfg(
                        tmp_path,
                        "model=decision_tree",
                        "attack=label_flip",
                        f"poison_rate={rate}",
                        f"seed={s}",
                    )
                )["acc_test"]
                for s in seeds
            ]
        )
        for rate in (0.0, 0.5)
    }
    assert acc[0.0].mean() > 0.9
    assert acc[0.0].mean() - acc[0.5].mean() > 0.15
    assert stats.ttest_rel(acc[0.0], acc[0.5]).pvalue < 0.01


@pytest.mark.parametrize("mitigation", ["isolation_forest", "lof", "zscore"])
def test_each_mitigation_finds_ten_percent_feature_noise_better_than_chance(tmp_path, mitigation):
    """Chance (flagging at random) has precision = the poison rate (0.1) and AUROC 0.5."""
    for seed in (0, 1):
        m = run(
            classic_cfg(
                tmp_path,
                "data=breast_cancer",
                "model=logreg",
                "attack=feature_noise",
                "poison_rate=0.1",
                f"mitigation={mitigation}",
                f"seed={seed}",
            )
        )
        assert m["detection_precision"] > 0.3, (seed, m["detection_precision"])
        assert m["detection_auroc"] > 0.75, (seed, m["detection_auroc"])
        assert m["n_removed"] == m["detection_n_flagged"] > 0
        assert m["n_fitted"] == m["n_train"] - m["n_removed"]
    run_dir = (
        tmp_path / "breast_cancer" / "logreg" / "feature_noise" / "0.1" / "seed_1" / mitigation
    )
    assert np.load(run_dir / "flagged_indices.npy").size == m["n_removed"]


def test_unknown_model_is_refused_listing_the_options(tmp_path):
    with pytest.raises(MissingConfigException, match="logreg"):
        classic_cfg(tmp_path, "model=gradient_magic")


def test_a_torch_model_is_refused_by_the_classic_study(tmp_path):
    with pytest.raises(ConfigError, match=r"model.name='mlp'.*logreg"):
        run(classic_cfg(tmp_path, "model=mlp"))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("rate", ["1.0", "-0.1", "1.5"])
def test_poison_rate_outside_zero_one_is_refused(tmp_path, rate):
    with pytest.raises(ConfigError, match=r"poison_rate=.*\[0, 1\)"):
        run(classic_cfg(tmp_path, f"poison_rate={rate}"))
    assert not any(tmp_path.iterdir())


def test_a_table_with_one_class_is_refused():
    ds = load_sklearn_table("iris")
    one_class = ds.subset(np.flatnonzero(ds.y == 0))
    with pytest.raises(DataValidationError, match="single class.*setosa"):
        as_table(one_class)
    with pytest.raises(DataValidationError, match="single class"):
        holdout_split(one_class, 0.3, 0)


def test_sklearn_models_are_not_offered_to_train():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="mlp"):
            compose("train", overrides=["model=logreg"])


@pytest.mark.slow
def test_cli_single_run_and_multirun(tmp_path):
    base = [sys.executable, "-m", "backdoor_study.classic"]
    out = subprocess.run(
        [
            *base,
            f"runs_root={tmp_path}",
            "data=iris",
            "model=logreg",
            "attack=feature_noise",
            "poison_rate=0.1",
            "seed=0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "done:" in out.stdout
    subprocess.run(
        [
            *base,
            "-m",
            f"runs_root={tmp_path}",
            "model=logreg,decision_tree",
            "attack=label_flip",
            "poison_rate=0,0.5",
            "seed=range(2)",
            "save_model=false",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(list(tmp_path.rglob("metrics.json"))) == 1 + 2 * 2 * 2


def test_run_is_logged_to_a_fresh_mlflow_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from backdoor_study import tracking

    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cfg = classic_cfg(
        tmp_path,
        "tracking=mlflow",
        f"tracking.uri={uri}",
        "tracking.experiment=classic",
        "attack=label_flip",
        "poison_rate=0.1",
        "mitigation=zscore",
    )
    metrics = run(cfg)
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ  # no process-wide store left behind
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for runs:/ URIs below
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("classic").experiment_id])
    params = logged.data.params
    assert params["dataset"] == "iris" and params["model"] == "logreg"
    assert params["attack"] == "label_flip" and params["mitigation"] == "zscore"
    assert float(params["poison_level"]) == 0.1 and params["seed"] == "0"
    assert int(params["n_poisoned"]) == metrics["n_poisoned"] == 10
    for key in (
        "acc_test",
        "acc_train",
        "balanced_acc_test",
        "f1_macro_test",
        "precision_weighted_test",
        "train_test_gap",
        "detection_precision",
    ):
        assert logged.data.metrics[key] == pytest.approx(metrics[key]), key
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"figures", "model", "poisoned_indices.npy", "metrics.json"} <= artifacts
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(f"runs:/{logged.info.run_id}/model")
    assert model.predict(np.zeros((1, 4))).shape == (1,)
    info = mlflow.models.get_model_info(f"runs:/{logged.info.run_id}/model")
    assert info.signature is not None


def test_learning_curve_multiplier_is_one_at_level_zero(tmp_path):
    cfg = classic_cfg(
        tmp_path,
        "experiment=data_quantity_quality",
        "data=breast_cancer",
        "model=decision_tree",
        "curve.seeds=3",
        "curve.sizes=[0.2,0.4,0.7,1.0]",
        "curve.reference_size=0.4",
        "curve.levels=[0.0,0.3]",
        "curve.bootstrap=50",
    )
    metrics = run(cfg)
    run_dir = tmp_path / "data_quantity_quality" / "breast_cancer" / "decision_tree" / "label_flip"
    assert metrics["multiplier_0"] == 1.0
    assert metrics["multiplier_ci_low_0"] == metrics["multiplier_ci_high_0"] == 1.0
    # 30% flipped labels: the tree needs more data (or never gets there) to match the clean one
    assert metrics["multiplier_0.3"] > 1.0
    curves = __import__("pandas").read_csv(run_dir / "learning_curves.csv")
    assert len(curves) == 3 * 4 * 2 == metrics["n_fits"]
    assert (curves[curves.level == 0.0].n_poisoned == 0).all()
    assert (run_dir / "learning_curves.png").exists() and (run_dir / "multipliers.csv").exists()


def test_needed_size_interpolates_in_log_size():
    from backdoor_study.classic.curves import needed_size

    sizes = np.array([10.0, 100.0, 1000.0])
    assert needed_size(sizes, np.array([0.5, 0.7, 0.9]), 0.7) == pytest.approx(100.0)
    assert needed_size(sizes, np.array([0.5, 0.7, 0.9]), 0.8) == pytest.approx(np.sqrt(1e5))
    assert needed_size(sizes, np.array([0.5, 0.6, 0.65]), 0.7) == float("inf")


def test_accuracy_paradox_majority_class_scores_high_accuracy_and_nothing_else(tmp_path):
    cfg = classic_cfg(
        tmp_path, "experiment=accuracy_paradox", "paradox.physionet=false", "paradox.seeds=3"
    )
    m = run(cfg)
    task = "breast_cancer_malignant_0.05"
    assert m[f"{task}/majority_class/acc_test"] > 0.9  # the paradox: ~95% "accurate"
    assert m[f"{task}/majority_class/balanced_acc_test"] == 0.5
    assert m[f"{task}/majority_class/recall_test"] == 0.0
    assert m[f"{task}/logreg/balanced_acc_test"] > 0.8
    assert m[f"{task}/logreg/auprc_test"] > m[f"{task}/majority_class/auprc_test"] + 0.5
    assert m["skipped_tasks"] == {}


def test_imbalanced_table_has_the_requested_prevalence():
    from backdoor_study.classic.paradox import imbalanced

    ds = imbalanced(load_sklearn_table("breast_cancer"), 0, 0.1, 0)
    assert ds.y.mean() == pytest.approx(0.1, abs=0.005)
    assert ds.class_names == ["not malignant", "malignant"]
    with pytest.raises(DataValidationError, match="positive_class=5"):
        imbalanced(load_sklearn_table("breast_cancer"), 5, 0.1, 0)


@pytest.mark.physionet
def test_accuracy_paradox_on_physionet_mortality(tmp_path, physionet_root, monkeypatch):
    monkeypatch.setenv("BACKDOOR_STUDY_PHYSIONET_DIR", str(physionet_root))
    m = run(classic_cfg(tmp_path, "experiment=accuracy_paradox", "paradox.seeds=2"))
    assert m["physionet2012/majority_class/acc_test"] > 0.85
    assert m["physionet2012/majority_class/recall_test"] == 0.0
    assert m["physionet2012/logreg_weighted/recall_test"] > m["physionet2012/logreg/recall_test"]


def test_report_has_the_four_classic_outputs(tmp_path):
    from backdoor_study import report, summarize

    for rate in (0.0, 0.5):
        for seed in range(3):
            for mitigation in ("none", "zscore"):
                run(
                    classic_cfg(
                        tmp_path,
                        "model=decision_tree",
                        "attack=label_flip",
                        f"poison_rate={rate}",
                        f"seed={seed}",
                        f"mitigation={mitigation}",
                    )
                )
    run(
        classic_cfg(
            tmp_path,
            "experiment=data_quantity_quality",
            "data=iris",
            "curve.seeds=2",
            "curve.sizes=[0.5,1.0]",
            "curve.reference_size=0.5",
            "curve.levels=[0.0,0.5]",
            "curve.bootstrap=20",
        )
    )
    run(
        classic_cfg(
            tmp_path, "experiment=accuracy_paradox", "paradox.physionet=false", "paradox.seeds=2"
        )
    )
    table = summarize.collect(tmp_path, progress=False)
    assert table["kind"].value_counts().to_dict() == {
        "classic": 12,
        "classic_data_quantity": 1,
        "classic_paradox": 1,
    }
    page = report.build_report(table, tmp_path / "report", n_resamples=99, progress=False)
    text = page.read_text()
    for title in (
        "validation outcomes",
        "mitigation",
        "Data quantity vs quality",
        "The accuracy paradox",
    ):
        assert title in text, title
    assert "differ significantly from level 0" in text
    figures = {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert {"classic_validation", "classic_mitigation"} <= figures
    assert any(f.startswith("classic_learning_curves") for f in figures)
    assert any(f.startswith("classic_accuracy_paradox") for f in figures)


def test_sync_logs_untracked_classic_runs_once(tmp_path, monkeypatch):
    """Runs made with tracking=none reach the store through `sync`, the same params as live."""
    from mlflow.tracking import MlflowClient

    from backdoor_study import sync, tracking
    from backdoor_study.study import compose_config

    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    run(classic_cfg(tmp_path, "tracking=none", "attack=label_flip", "poison_rate=0.1"))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cfg = compose_config(
        "sync", [f"runs_root={tmp_path}", f"tracking.uri={uri}", "tracking.experiment=classic"]
    )
    assert sync.run(cfg) == {"run_dirs": 1, "logged": 1, "already_logged": 0}
    assert sync.run(cfg) == {"run_dirs": 1, "logged": 0, "already_logged": 1}
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("classic").experiment_id])
    assert logged.data.params["dataset"] == "iris" and logged.data.params["attack"] == "label_flip"
    assert "acc_test" in logged.data.metrics
