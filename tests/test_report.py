"""summarize + report on a small runs tree: every run kind in the summary, every figure on disk, and
index.html rendered by headless Chromium without console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from backdoor_study import report, summarize
from backdoor_study.study import compose_config, compose_train
from backdoor_study.train import run as train_run

MODELS = ("mlp", "lstm")
TRIGGERS = ("rare_value", "missingness")
RATES = (0.0, 0.01, 0.05)
SEEDS = (1, 2, 3)
DETECTORS = ("spectral", "saliency")


def _write_train_run(run_dir: Path, model: str, trigger: str, rate: float, seed: int) -> None:
    """A completed training run as train writes it (the files report and summarize read)."""
    rng = np.random.default_rng(zlib.crc32(f"{model}{trigger}{rate}{seed}".encode()))
    run_dir.mkdir(parents=True)
    cfg = {
        "data": {"name": "synthetic", "split": {"seed": 42}, "subset": "dev", "dev_size": 1000},
        "model": {"name": model},
        "trigger": {"name": trigger, "target_label": 0},
        "attack": {"name": "backdoor"},
        "poison": {"source": "dirty_label"},
        "poison_rate": rate,
        "seed": seed,
        "epochs": 3,
        "trainer": {"selection": "best"},
        "metrics": {"threshold": "youden"},
    }
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    meta = {"config_digest": f"d{seed}", "data": {"digest": "x"}, "timings": {"total_s": 1.0}}
    if seed == 1:
        meta["mlflow_run_id"] = f"mlflow{model}{trigger}{rate}"
    (run_dir / "run_metadata.json").write_text(json.dumps(meta))
    works = trigger == "rare_value"
    asr = min(1.0, 0.05 + (18 * rate if works else 0) + rng.normal(0, 0.03))
    n = 200
    y = (rng.random(n) < 0.2).astype(int)
    p1 = np.clip(0.2 + 0.4 * y + rng.normal(0, 0.15, n), 0.01, 0.99)
    triggered = y == 1
    p1_t = np.where(triggered, np.clip(p1 - (0.5 if works and rate else 0), 0.01, 0.99), np.nan)
    pd.DataFrame(
        {
            "stay_id": np.arange(n),
            "y_true": y,
            "pred": (p1 >= 0.35).astype(int),
            "prob_0": 1 - p1,
            "prob_1": p1,
            "triggered": triggered,
            "prob_triggered_0": 1 - p1_t,
            "prob_triggered_1": p1_t,
        }
    ).to_parquet(run_dir / "predictions.parquet")
    epochs = np.arange(1, 4)
    pd.DataFrame(
        {"epoch": epochs, "train_loss": 0.5 / epochs, "val_auroc": 0.6 + 0.03 * epochs}
    ).to_csv(run_dir / "history.csv", index=False)
    metrics = {
        "auroc_clean": 0.7 - 0.3 * rate + rng.normal(0, 0.01),
        "ASR": asr,
        "ASR_flip": asr * 0.9,
        "decision_threshold": 0.35,
        "confusion_matrix_clean": [[100, 20], [10, 30]],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def make_runs_tree(root: Path) -> Path:
    """Train, detect and sanitize runs of 2 models x 2 triggers x 3 rates x 3 seeds."""
    for model in MODELS:
        for trigger in TRIGGERS:
            for rate in RATES:
                for seed in SEEDS:
                    run_dir = root / model / trigger / str(rate) / f"seed_{seed}"
                    _write_train_run(run_dir, model, trigger, rate, seed)
                    if rate == 0:
                        continue
                    for i, det in enumerate(DETECTORS):
                        d = run_dir / "detect" / det
                        d.mkdir(parents=True)
                        (d / "detection_metrics.json").write_text(
                            json.dumps({"auroc": 0.6 + 0.3 * i, "precision": 0.5, "n_flagged": 10})
                        )
                        if det == "saliency":
                            np.save(
                                d / "attribution_map.npy", np.random.default_rng(0).random((5, 12))
                            )
                    s = run_dir / "sanitized" / "saliency"
                    s.mkdir(parents=True)
                    (s / "sanitize.json").write_text(
                        json.dumps({"ASR_before": 0.9, "n_removed": 12})
                    )
                    (s / "metrics.json").write_text(json.dumps({"ASR": 0.1, "auroc_clean": 0.69}))
    (root / "mlruns" / "0" / "abc").mkdir(parents=True)  # a store: never read as a run
    (root / "mlruns" / "0" / "abc" / "metrics.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def runs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs_tree(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def built_report(runs_tree: Path) -> Path:
    cfg = compose_config("report", [f"runs_root={runs_tree}", "progress=false", "n_resamples=200"])
    return report.run(cfg)


def test_summarize_one_row_per_run_with_kind_config_and_metrics(runs_tree: Path) -> None:
    cfg = OmegaConf.create({"runs_root": str(runs_tree), "progress": False})
    table = summarize.run(cfg)
    n_train = len(MODELS) * len(TRIGGERS) * len(RATES) * len(SEEDS)
    n_poisoned = n_train * 2 // 3
    assert table["kind"].value_counts().to_dict() == {
        "train": n_train,
        "detect": n_poisoned * len(DETECTORS),
        "sanitize": n_poisoned,
    }
    assert {"model", "trigger", "poison_rate", "seed", "split_seed", "data", "selection"} <= set(
        table
    )
    assert "confusion_matrix_clean" not in table  # lists are not columns
    det = table[table["kind"] == "detect"]
    assert set(det["detector"]) == set(DETECTORS) and det["detection_auroc"].notna().all()
    assert (det["train_run_dir"].map(lambda p: Path(p).parent.name) != "detect").all()
    san = table[table["kind"] == "sanitize"]
    assert (san["ASR"] == 0.1).all() and (san["n_removed"] == 12).all()
    assert table["mlflow_run_id"].notna().sum() == len(MODELS) * len(TRIGGERS) * len(RATES)
    back = summarize.read_summary(runs_tree / "summary.parquet")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert len(summarize.read_summary(runs_tree / "summary.csv")) == len(table)


def test_summarize_refuses_a_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runs_root="):
        summarize.collect(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no completed run"):
        summarize.run(OmegaConf.create({"runs_root": str(tmp_path), "progress": False}))


def test_report_writes_every_figure_stats_and_the_page(built_report: Path) -> None:
    out = built_report.parent
    expected = (
        "asr_vs_rate",
        "stealth",
        "reliability",
        "confusion",
        "training_curves",
        "detection_heatmap",
        "saliency_0",
        "sanitize_asr",
    )
    for name in expected:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    st = pd.read_csv(out / "stats.csv")
    asr = st[
        (st["metric"] == "ASR") & (st["trigger"] == "rare_value") & (st["poison_rate"] == 0.05)
    ]
    assert len(asr) == 2 and asr["significant"].all()
    assert (out / "stats.md").read_text().startswith("|")
    page = built_report.read_text()
    embedded = set(re.findall(r"<img alt='([^']+)' src='data:image/png;base64,", page))
    assert embedded == {p.stem for p in (out / "figures").glob("*.png")} >= set(expected)
    assert not re.search(r"""(src|href)=['"]https?:""", page)  # self-contained: nothing fetched
    assert "Best clean AUROC" in page and "Best detector" in page and "saliency" in page
    assert "mlflowmlprare_value0.05" in page  # the MLflow run id beside its run
    assert "href='../mlp/rare_value/0.05/seed_1/'" in page  # run dir links, relative to the page


def test_report_kpis_match_the_planted_study(built_report: Path, runs_tree: Path) -> None:
    summary = summarize.read_summary(runs_tree / "summary.parquet")
    ctx = report.ReportContext(
        summary=summary,
        stats=pd.read_csv(built_report.parent / "stats.csv"),
        out_dir=built_report.parent,
    )
    k = report.kpis(ctx)
    assert k["best_detector"]["detector"] == "saliency"
    lowest = {(r["trigger"], r["model"]): r["rate"] for r in k["lowest_rate"]}
    assert lowest[("rare_value", "mlp")] == 0.05 and lowest[("missingness", "mlp")] is None


def test_report_on_real_training_runs(tmp_path: Path) -> None:
    """Files as train really writes them (config_resolved.yaml, predictions, history)."""
    common = [
        "model=mlp",
        "trigger=rare_value",
        "epochs=1",
        f"runs_root={tmp_path / 'runs'}",
        f"data.data_dir={tmp_path / 'data'}",
        "data.n_stays=600",
        "data.dev_size=600",
        "metrics.bootstrap=0",
        "trainer.progress=false",
    ]
    for seed in (1, 2):
        train_run(compose_train([*common, "poison_rate=0.05", f"seed={seed}"]))
    page = report.run(
        compose_config("report", [f"runs_root={tmp_path / 'runs'}", "progress=false"])
    )
    table = summarize.read_summary(tmp_path / "runs" / "summary.csv")
    assert len(table) == 4  # two poisoned runs and the two clean references they trained
    assert set(table["poison_rate"]) == {0.0, 0.05} and set(table["split_seed"]) == {42}
    assert set(table["data"]) == {"synthetic"} and set(table["selection"]) == {"best"}
    for name in ("asr_vs_rate", "stealth", "reliability", "confusion", "training_curves"):
        assert (page.parent / "figures" / f"{name}.png").stat().st_size > 1000


def test_report_config_names_a_bad_value(tmp_path: Path) -> None:
    from backdoor_study.config import ConfigError

    cfg = compose_config("report", [f"runs_root={tmp_path}", "ci=1.5"])
    with pytest.raises(ConfigError, match="ci=1.5"):
        report.run(cfg)


# --------------------------------------------------------------------------------------- Chromium
CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found on PATH (apt-get install -y chromium) to render index.html",
)


def render(page: Path, tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """Open ``page`` in headless Chromium: its console messages and a screenshot (H, W, C)."""
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert shot.exists(), f"no screenshot; chromium said:\n{proc.stderr[-2000:]}"
    return console, mpimg.imread(shot)


@needs_chromium
def test_chromium_catches_console_errors(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefined_function();</script></body></html>")
    console, _ = render(bad, tmp_path)
    assert any("undefined_function" in line for line in console)


@needs_chromium
def test_index_html_renders_without_console_errors(built_report: Path, tmp_path: Path) -> None:
    console, img = render(built_report, tmp_path)
    assert console == []
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not a blank page
    assert (rgb.reshape(-1, 3).max(axis=1) - rgb.reshape(-1, 3).min(axis=1)).max() > 0.3  # colour
