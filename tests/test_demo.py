"""The demo study end to end on a tiny grid: train, detect, sanitize with the best detector, report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backdoor_study import demo
from backdoor_study.study import compose_config


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("demo")
    cfg = compose_config(
        "demo",
        [
            "models=[mlp]",
            "triggers=[rare_value]",
            "poison_rates=[0.0,0.1]",
            "seeds=[1,2]",
            "epochs=2",
            f"runs_root={tmp / 'runs'}",
            "detectors=[spectral,isolation_forest]",
            "detect_rates=[0.1]",
            "sanitize_rates=[0.1]",
            "track_with=none",
            "train_overrides=['data.n_stays=800','data.dev_size=800',"
            f"'data.data_dir={tmp / 'data'}','metrics.bootstrap=0']",
        ],
    )
    return demo.run(cfg), tmp / "runs"


@pytest.mark.slow
def test_demo_runs_every_stage_and_ends_with_the_report(tiny_demo: tuple[dict, Path]) -> None:
    out, runs = tiny_demo
    assert out["n_train"] == 4 and out["table"]["eval_matches"].all()
    assert out["n_detect"] == 2 * 2  # two detectors x the two poisoned runs
    assert out["best_detector"] in {"spectral", "isolation_forest"}
    assert out["n_sanitize"] == 2
    assert out["report"] == runs / "report" / "index.html" and out["report"].stat().st_size > 10_000
    summary = pd.read_csv(runs / "summary.csv")
    assert summary["kind"].value_counts().to_dict() == {"train": 4, "detect": 4, "sanitize": 2}
    sanitized = summary[summary["kind"] == "sanitize"]
    assert set(sanitized["detector"]) == {out["best_detector"]}
    assert sanitized["ASR"].notna().all() and sanitized["before_ASR"].notna().all()
    for name in ("asr_vs_rate", "detection_heatmap", "sanitize_asr"):
        assert (runs / "report" / "figures" / f"{name}.png").stat().st_size > 1000
    assert out["mlflow_ui"] is None  # tracking=none: nothing recorded


def test_demo_detectors_all_lists_the_detector_group() -> None:
    cfg = compose_config("demo", [])
    names = demo.detectors(cfg)
    assert {"spectral", "activation_clustering", "spectre", "saliency"} <= set(names)


def test_experiment_demo_preset_is_the_demo_training_grid() -> None:
    """`train -m experiment=demo` and `make demo` train the same runs (one grid, two launchers)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from backdoor_study.config import CONF_DIR

    demo_cfg = compose_config("demo", [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        preset = compose("train", ["experiment=demo"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in preset.hydra.sweeper.params.items()}
    assert params["model"] == list(demo_cfg.models)
    assert params["trigger"] == list(demo_cfg.triggers)
    assert [float(r) for r in params["poison_rate"]] == [float(r) for r in demo_cfg.poison_rates]
    assert [int(s) for s in params["seed"]] == list(demo_cfg.seeds)
    assert preset.epochs == demo_cfg.epochs and preset.runs_root == demo_cfg.runs_root
    extra = dict(o.split("=", 1) for o in demo_cfg.train_overrides)
    assert int(extra["data.dev_size"]) == preset.data.dev_size
    assert extra["data.data_dir"] == preset.data.data_dir
    assert int(extra["metrics.bootstrap"]) == preset.metrics.bootstrap
