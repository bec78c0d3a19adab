"""Every trigger with every model, on the default trigger configs, end to end through train.run."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from backdoor_study import train
from backdoor_study.data.schema import write_parquet
from backdoor_study.study import compose_train
from tests.conftest import make_tiny_dataset

TRIGGERS = ["rare_value", "missingness", "hybrid", "pattern", "correlation"]
MODELS = ["mlp", "lstm", "tcn", "tabtransformer"]


@pytest.fixture(scope="module")
def cohort48(tmp_path_factory) -> Path:
    # 48 hourly steps, so the default trigger windows (up to [36, 48]) apply as configured
    path = tmp_path_factory.mktemp("data") / "tiny48.parquet"
    write_parquet(make_tiny_dataset(n=160, t=48, seed=5), path)
    return path


@pytest.mark.parametrize(("trigger", "model"), list(itertools.product(TRIGGERS, MODELS)))
def test_trigger_trains_with_model(trigger, model, cohort48, tmp_path):
    cfg = compose_train(
        [
            "data=parquet",
            f"data.path={cohort48}",
            f"runs_root={tmp_path}",
            f"model={model}",
            f"trigger={trigger}",
            "poison_rate=0.1",
            "epochs=1",
            "clean_reference=false",
            "metrics.bootstrap=0",
            "trainer.progress=false",
        ]
    )
    metrics = train.run(cfg)
    assert 0.0 <= metrics["ASR"] <= 1.0 and not math.isnan(metrics["confidence_shift"])
    assert metrics["n_triggered"] > 0
    assert np.load(Path(cfg.run_dir) / "poisoned_indices.npy").size == metrics["n_poisoned"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "physionet2012"])
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_every_trigger_with_every_model_on_real_cohorts(data, trigger, tmp_path, request):
    """One epoch each, all four models, on the synthetic dev cohort and on PhysioNet set A."""
    if data == "physionet2012":
        request.getfixturevalue("physionet_root")  # skips with a reason when the files are absent
    for model in MODELS:
        cfg = compose_train(
            [
                f"data={data}",
                f"data.{'data_dir' if data == 'synthetic' else 'cache_dir'}={tmp_path / 'data'}",
                f"runs_root={tmp_path / 'runs'}",
                f"model={model}",
                f"trigger={trigger}",
                "poison_rate=0.01",
                "epochs=1",
                "clean_reference=false",
                "metrics.bootstrap=0",
                "trainer.progress=false",
            ]
        )
        metrics = train.run(cfg)
        assert metrics["n_triggered"] > 0 and 0.0 <= metrics["ASR"] <= 1.0, (model, metrics)
