"""``detect`` and ``sanitize`` on real (tiny) run directories, as a user runs them: detection beats
chance on MLP and LSTM, outputs line up with poisoned_indices.npy, skip / refuse / overwrite, the
clean-run flag rate, bad inputs, runs_root mode, and a sanitized retrain that removes the backdoor."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from backdoor_study import detect, rundir, sanitize, train
from backdoor_study.config import CONF_DIR, DETECTOR_SCHEMAS, ConfigError
from backdoor_study.data.schema import DataValidationError, write_parquet
from backdoor_study.detectors import DETECTORS, build_detector
from backdoor_study.detectors.spectral import principal_projections
from backdoor_study.detectors.spectre import que_scores
from tests.conftest import REPO_ROOT, make_tiny_dataset

# rare_value on Temp in the last third of a 12-step stay: implants reliably on the tiny cohort
POISONED = [
    "trigger=rare_value",
    "trigger.variables=[Temp]",
    "trigger.window=[8,12]",
    "poison_rate=0.1",
    "epochs=8",
    "optimizer.lr=3e-3",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=600, t=12, seed=5), path)
    return path


def train_cfg(cohort: Path | None, runs_root: Path, *overrides: str) -> DictConfig:
    data = ["data=parquet", f"data.path={cohort}"] if cohort is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *data,
                f"runs_root={runs_root}",
                "trainer.batch_size=64",
                "trainer.progress=false",
                "metrics.bootstrap=0",
                *overrides,
            ],
        )


def detect_cfg(run_dir: Path | str | None, *overrides: str, name: str = "detect") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        target = [f"run_dir={run_dir}"] if run_dir is not None else []
        return compose(name, overrides=[*target, "device=cpu", "progress=false", *overrides])


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict[str, Path]:
    """A poisoned MLP (with its clean reference) and a poisoned LSTM on the tiny cohort."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for model, extra in (("mlp", []), ("lstm", ["clean_reference=false"])):
        cfg = train_cfg(cohort, root, f"model={model}", *POISONED, *extra)
        train.run(cfg)
        out[model] = Path(cfg.run_dir)
    out["clean"] = root / "mlp" / "rare_value" / "0.0" / "seed_42"
    assert (out["clean"] / "metrics.json").is_file()
    return out


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("detect", "sanitized"))
    return dest


@pytest.mark.parametrize("model", ["mlp", "lstm"])
@pytest.mark.parametrize("name", sorted(DETECTOR_SCHEMAS))
def test_detection_outputs_line_up_with_poisoned_indices(runs, model, name):
    run_dir = runs[model]
    m = detect.run(detect_cfg(run_dir, f"detector={name}"))
    out = run_dir / "detect" / name
    assert Path(m["detection_dir"]) == out
    for f in ("scores.npy", "flagged_indices.npy", "detection_metrics.json", "detect_config.yaml"):
        assert (out / f).is_file(), f
    assert (out / "scores.png").stat().st_size > 1000
    if name == "saliency":
        assert (out / "attribution_map.png").stat().st_size > 1000
    poisoned = np.load(run_dir / "poisoned_indices.npy")
    n_train = json.loads((run_dir / "metrics.json").read_text())["n_train"]
    scores = np.load(out / "scores.npy")
    flagged = np.load(out / "flagged_indices.npy")
    assert scores.shape == (n_train,) and np.isfinite(scores).all()
    assert flagged.dtype == np.int64 and np.all(np.diff(flagged) > 0)
    assert flagged.size == 0 or (0 <= flagged.min() and flagged.max() < n_train)
    # the metrics are those of these very files, indexed like poisoned_indices.npy
    is_poisoned = np.zeros(n_train, dtype=bool)
    is_poisoned[poisoned] = True
    assert m["auroc"] == pytest.approx(roc_auc_score(is_poisoned, scores))
    if flagged.size:
        assert m["recall"] == pytest.approx(np.isin(poisoned, flagged).mean())
    assert m["n_scored"] == n_train and m["n_poisoned"] == poisoned.size
    assert m["n_flagged"] == flagged.size and m["expected_rate"] == 0.1
    assert m["wall_s"] > 0
    on_disk = json.loads((out / "detection_metrics.json").read_text())
    assert on_disk["auroc"] == pytest.approx(m["auroc"])
    assert OmegaConf.load(out / "detect_config.yaml").identity.detector.name == name


def test_isolation_forest_finds_an_out_of_range_trigger_in_the_inputs(runs):
    # data-level: the trigger (Temp far above its range) is an outlier before any model sees it
    m = detect.run(detect_cfg(runs["mlp"], "detector=isolation_forest"))
    assert m["auroc"] > 0.7


@pytest.fixture(scope="module")
def cohort_runs(tmp_path_factory):
    """Poisoned runs on a small synthetic cohort (8,000 stays, rare_value on HR, 5%), made lazily."""
    root = tmp_path_factory.mktemp("cohort")
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            cfg = train_cfg(
                None,
                root / "runs",
                "data=synthetic",
                "data.n_stays=8000",
                "data.subset=full",
                f"data.data_dir={root / 'data'}",
                f"model={model}",
                "trigger=rare_value",
                "poison_rate=0.05",
                "seed=1",
                "clean_reference=false",
            )
            train.run(cfg)
            made[model] = Path(cfg.run_dir)
        return made[model]

    return get


# On the tiny 5-variable cohort above, where one variable decides a clean stay, the feature-level
# detectors sit near chance; the claims are made on the synthetic cohort, as the table's are.
@pytest.mark.parametrize(
    ("model", "min_spectre", "min_saliency"),
    [
        # measured: spectre 0.977, saliency 0.925 (ASR 0.81)
        ("mlp", 0.75, 0.85),
        # measured: spectre 0.840, saliency 0.698 (ASR 0.61: the backdoor implants only partly)
        pytest.param("lstm", 0.75, 0.6, marks=pytest.mark.slow),
    ],
)
def test_spectre_and_saliency_beat_chance_on_a_poisoned_run(
    cohort_runs, model, min_spectre, min_saliency
):
    run_dir = cohort_runs(model)
    spectre = detect.run(detect_cfg(run_dir, "detector=spectre"))
    saliency = detect.run(detect_cfg(run_dir, "detector=saliency"))
    assert spectre["auroc"] > min_spectre, spectre["auroc"]
    assert saliency["auroc"] > min_saliency, saliency["auroc"]


def test_same_detection_is_skipped_other_config_gets_its_own_dir_or_is_refused(runs, tmp_path):
    run_dir = copy_run(runs["mlp"], tmp_path / "run")
    first = detect.run(detect_cfg(run_dir, "detector=spectral"))
    out = Path(first["detection_dir"])
    stamp = (out / "scores.npy").stat().st_mtime_ns
    again = detect.run(detect_cfg(run_dir, "detector=spectral", "device=cpu", "batch_size=7"))
    assert again["skipped"] and (out / "scores.npy").stat().st_mtime_ns == stamp

    other = detect.run(detect_cfg(run_dir, "detector=spectral", "detector.eps_multiplier=1.0"))
    assert Path(other["detection_dir"]).name.startswith("spectral-")
    assert other["n_flagged"] < first["n_flagged"]
    assert (out / "scores.npy").stat().st_mtime_ns == stamp  # the default one is untouched

    # a directory holding another detection (e.g. written before the defaults changed): refused
    record = OmegaConf.load(out / "detect_config.yaml")
    record.identity.detector.eps_multiplier = 2.0
    (out / "detect_config.yaml").write_text(OmegaConf.to_yaml(record))
    with pytest.raises(detect.DetectError, match=r"differs in: detector\.eps_multiplier"):
        detect.run(detect_cfg(run_dir, "detector=spectral"))
    replaced = detect.run(detect_cfg(run_dir, "detector=spectral", "overwrite=true"))
    assert not replaced.get("skipped")
    assert OmegaConf.load(out / "detect_config.yaml").identity.detector.eps_multiplier == 1.5


def test_flag_classes_restricts_flags_to_the_named_class_in_its_own_dir(runs, tmp_path):
    run_dir = copy_run(runs["mlp"], tmp_path / "run")
    every = detect.run(detect_cfg(run_dir, "detector=spectral"))
    only = detect.run(detect_cfg(run_dir, "detector=spectral", "flag_classes=[0]"))
    out = Path(only["detection_dir"])
    assert out.name.startswith("spectral-") and out != Path(every["detection_dir"])
    labels = json.loads((run_dir / "metrics.json").read_text())
    flagged_all = np.load(Path(every["detection_dir"]) / "flagged_indices.npy")
    flagged_0 = np.load(out / "flagged_indices.npy")
    # the same scores; the class-0 flags are the class-0 part of the unrestricted ones
    np.testing.assert_array_equal(
        np.load(out / "scores.npy"), np.load(Path(every["detection_dir"]) / "scores.npy")
    )
    assert 0 < flagged_0.size < flagged_all.size and set(flagged_0) <= set(flagged_all)
    assert only["flag_classes"] == [0] and every["flag_classes"] == "all"
    assert only["n_flagged"] == flagged_0.size and labels["n_train"] > flagged_0.size
    with pytest.raises(
        detect.DetectError, match=r"flag_classes=\[7\].*valid: 'all' or a list of \[0, 1\]"
    ):
        detect.run(detect_cfg(run_dir, "detector=spectral", "flag_classes=[7]"))
    with pytest.raises(ConfigError, match=r"flag_classes='some'.*'all' or a non-empty list"):
        detect.run(detect_cfg(run_dir, "detector=spectral", "flag_classes=some"))


def test_clean_run_still_runs_and_reports_its_flag_rate(runs):
    m = detect.run(detect_cfg(runs["clean"], "detector=isolation_forest"))
    assert m["n_poisoned"] == 0 and m["poison_rate"] == 0.0
    assert np.isnan(m["auroc"]) and np.isnan(m["recall"])
    # 'auto' on a clean run budgets clean_run_rate: every flag is a false positive
    assert m["expected_rate"] == 0.05
    assert m["flagged_fraction"] == pytest.approx(0.075, abs=0.01)
    assert m["precision"] == 0.0


def test_edited_poisoned_indices_are_refused(runs, tmp_path):
    run_dir = copy_run(runs["mlp"], tmp_path / "run")
    idx = np.load(run_dir / "poisoned_indices.npy")
    np.save(run_dir / "poisoned_indices.npy", idx[1:])
    with pytest.raises(rundir.RunDirError, match="poisoned_indices"):
        detect.run(detect_cfg(run_dir, "detector=spectral"))
    assert not (run_dir / "detect").exists()


def test_bad_inputs_give_clear_errors(runs, tmp_path):
    with pytest.raises(rundir.RunDirError, match="does not exist"):
        detect.run(detect_cfg(tmp_path / "nowhere", "detector=spectral"))
    unfinished = copy_run(runs["mlp"], tmp_path / "unfinished")
    (unfinished / "metrics.json").unlink()
    with pytest.raises(rundir.RunDirError, match="unfinished"):
        detect.run(detect_cfg(unfinished, "detector=spectral"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(rundir.RunDirError, match="not a run directory"):
        detect.run(detect_cfg(tmp_path / "empty", "detector=spectral"))
    with pytest.raises(ConfigError, match=r"expected_rate=1\.5 .*'auto'.*\(0, 1\)"):
        detect.run(detect_cfg(runs["mlp"], "detector=spectral", "expected_rate=1.5"))
    with pytest.raises(ConfigError, match=r"detector\.eps_multiplier=0\.0 .*> 0"):
        detect.run(detect_cfg(runs["mlp"], "detector=spectral", "detector.eps_multiplier=0"))
    with pytest.raises(ConfigError, match="exactly one of run_dir"):
        detect.run(detect_cfg(None, "detector=spectral"))
    with pytest.raises(Exception, match=r"(?s)detector/nope.*spectre"):
        detect_cfg(runs["mlp"], "detector=nope")


def test_runs_root_mode_detects_every_completed_train_run(runs, tmp_path):
    root = tmp_path / "root"
    copy_run(runs["mlp"], root / "a" / "seed_1")
    copy_run(runs["clean"], root / "b" / "seed_1")
    copy_run(runs["clean"], root / "a" / "seed_1" / "sanitized" / "x")  # not a train run
    copy_run(runs["clean"], root / "mlartifacts" / "1" / "artifacts")  # the store's copy
    copy_run(runs["clean"], root / ".b.new")  # a staged overwrite, not a run yet
    (root / "c").mkdir()  # an unfinished run: no metrics.json
    results = detect.run(detect_cfg(None, f"runs_root={root}", "detector=spectral"))
    assert sorted(Path(r["run_dir"]) for r in results) == [
        root / "a" / "seed_1",
        root / "b" / "seed_1",
    ]
    with pytest.raises(detect.DetectError, match="no completed train run"):
        detect.run(detect_cfg(None, f"runs_root={root / 'c'}", "detector=spectral"))


def test_each_detector_is_its_config_schema():
    """One definition of a detector's parameters: the schema is the detector's base class, so the
    CLI's defaults and checks and build_detector's are the same ones."""
    import dataclasses

    for name, schema in DETECTOR_SCHEMAS.items():
        cls = DETECTORS[name]
        assert issubclass(cls, schema), name
        assert {f.name for f in dataclasses.fields(cls) if f.init} == {
            f.name for f in dataclasses.fields(schema)
        }, name
        built = build_detector(name)
        for f in dataclasses.fields(schema):
            if f.name != "name":
                assert getattr(built, f.name) == f.default, (name, f.name)
    with pytest.raises(ConfigError, match=r"detector\.n_components=1\.5 is invalid"):
        build_detector("spectre", n_components=1.5)  # a float is not an integer here either


def test_sanitize_removes_the_backdoor_and_links_both_runs(runs, tmp_path):
    run_dir = runs["mlp"]
    detector = "isolation_forest"  # the detector that finds this tiny cohort's trigger
    # a defender who budgets generously (45% of each class) removes most of the poison
    cfg = detect_cfg(run_dir, f"detector={detector}", "expected_rate=0.3", name="sanitize")
    result = sanitize.run(cfg)
    det_dir = Path(result["detection_dir"])
    assert det_dir.name.startswith(f"{detector}-")  # a non-default budget: its own directory
    san = run_dir / "sanitized" / det_dir.name
    assert Path(result["sanitized_run_dir"]) == san
    on_disk = json.loads((san / "sanitize.json").read_text())
    assert on_disk["after"]["ASR"] == pytest.approx(result["after"]["ASR"])
    flagged = np.load(det_dir / "flagged_indices.npy")
    assert result["n_excluded"] == flagged.size
    assert result["after"]["n_train"] == result["before"]["n_train"] - flagged.size
    assert (
        result["after"]["n_poisoned"]
        == result["before"]["n_poisoned"] - result["n_poisoned_excluded"]
    )
    assert result["n_poisoned_excluded"] >= 0.8 * result["before"]["n_poisoned"]
    # ...yet on this easy cohort the few poisoned stays left still carry the backdoor (recorded,
    # not hidden); removing all of them (an oracle exclusion through the same hook) undoes it
    assert result["after"]["ASR"] > 0.5
    poisoned = np.load(run_dir / "poisoned_indices.npy")
    np.save(tmp_path / "oracle.npy", poisoned)
    oracle_cfg = sanitize.sanitized_config(
        cfg, run_dir, tmp_path / "oracle_run", tmp_path / "oracle.npy", poisoned
    )
    oracle = train.run(oracle_cfg)
    assert oracle["n_poisoned"] == 0
    assert oracle["ASR"] < result["clean_model"]["ASR"] + 0.15 < result["before"]["ASR"] - 0.3
    assert abs(oracle["auroc_clean"] - result["clean_model"]["auroc_clean"]) < 0.05
    assert result["clean_model"]["ASR"] is not None and result["clean_model"]["auroc_clean"]
    # linked both ways
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["sanitized_runs"][det_dir.name] == str(san)
    san_meta = json.loads((san / "run_metadata.json").read_text())
    assert san_meta["sanitized_from"]["run_dir"] == str(run_dir)
    # the sanitized run is an ordinary run: loadable, its config records the exclusion
    loaded = rundir.load_run(san, device="cpu")
    assert loaded.cfg.sanitize.n_excluded == flagged.size
    assert loaded.prepared.splits.train.size == result["after"]["n_train"]
    # its poisoned_indices are re-indexed into the reduced split: the same stays, minus the removed
    train_ids = np.array(json.loads((run_dir / "splits.json").read_text())["stay_ids"]["train"])
    poisoned_ids = set(train_ids[np.load(run_dir / "poisoned_indices.npy")]) - set(
        train_ids[flagged]
    )
    san_train_ids = loaded.prepared.dataset.stay_id[loaded.prepared.splits.train]
    assert set(san_train_ids[loaded.poisoned_indices]) == poisoned_ids
    assert not set(san_train_ids) & set(train_ids[flagged])
    # again: everything reused
    assert sanitize.run(cfg)["skipped"]
    # an interrupted retrain (no metrics.json yet, checkpoints left) is resumed by running
    # sanitize again, to the same model
    final = (san / "final_model.pt").read_bytes()
    (san / "metrics.json").unlink()
    (san / "final_model.pt").unlink()
    resumed = sanitize.run(cfg)
    assert not resumed["skipped"] and (san / "final_model.pt").read_bytes() == final
    assert resumed["after"]["ASR"] == result["after"]["ASR"]
    # a changed exclusion file is refused, never trained on
    np.save(det_dir / "flagged_indices.npy", flagged[1:])
    with pytest.raises(DataValidationError, match="exclude_file.*changed"):
        rundir.load_run(san, device="cpu")
    np.save(det_dir / "flagged_indices.npy", flagged)


@pytest.mark.slow
def test_cli_multirun_over_runs_and_detectors(runs):
    a, b = runs["mlp"], runs["lstm"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "backdoor_study.detect",
            "-m",
            f"run_dir={a},{b}",
            "detector=spectral,isolation_forest",
            "device=cpu",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for r in (a, b):
        for name in ("spectral", "isolation_forest"):
            assert (r / "detect" / name / "detection_metrics.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "backdoor_study.detect", "run_dir=/nonexistent", "device=cpu"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_feature_probes_script_reports_the_poison_direction(runs):
    """scripts/feature_probes.py (docs/detection_findings.md): a supervised probe finds the
    poison in the penultimate features, and the clean-twin controls run."""
    probes = runpy.run_path(str(REPO_ROOT / "scripts" / "feature_probes.py"), run_name="probes")
    line = probes["probe_run"](runs["mlp"], True, [8], saliency=True)
    fields = dict(
        part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(" | ") if "(" not in part
    )
    assert float(fields["probe"]) > 0.9  # the trigger is a direction any model's features carry
    assert 0.0 <= float(fields["poisoned in spectre's robust core"]) <= 1.0
    assert {"spectre", "spectre k=8", "probe clean model", "probe untriggered"} <= set(fields)
    for name in ("spectre oracle", "spectre oracle alpha=4", "saliency"):
        assert 0.0 <= float(fields[name]) <= 1.0, name
    assert np.isfinite(float(fields["trigger effect median"]))
    assert "spearman(trigger effect, saliency)" in line
    with pytest.raises(SystemExit, match="clean twin"):  # the LSTM was trained without one
        probes["probe_run"](runs["lstm"], False, [], saliency=True)


def test_feature_probes_oracle_whitens_with_the_clean_rows_alone():
    """The oracle spectre of scripts/feature_probes.py scores as spectre would with the clean
    rows' own mean and covariance (any whitening root: QUE does not change under a rotation)."""
    probes = runpy.run_path(str(REPO_ROOT / "scripts" / "feature_probes.py"), run_name="probes")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((800, 24)) @ rng.standard_normal((24, 24))
    poisoned = np.zeros(800, dtype=bool)
    poisoned[:40] = True
    x[:40] += 3.0 * rng.standard_normal(24)
    z = principal_projections(x, 16)
    clean = z[~poisoned]
    evals, evecs = np.linalg.eigh(np.cov(clean, rowvar=False))
    white = (z - clean.mean(axis=0)) @ (evecs / np.sqrt(evals)) @ evecs.T
    for alpha in (1.0, 4.0):
        want = roc_auc_score(poisoned, que_scores(white, alpha))
        assert probes["oracle_spectre"](x, poisoned, alpha) == pytest.approx(want, abs=1e-12)
    assert probes["oracle_spectre"](x, poisoned, 4.0) > 0.95
