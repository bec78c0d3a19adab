"""Saliency detector on small trained models: poisoned stays' attribution piles onto the trigger."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from backdoor_study import train
from backdoor_study.config import CONF_DIR
from backdoor_study.data.schema import write_parquet
from backdoor_study.detectors import build_detector
from backdoor_study.experiment import prepare
from backdoor_study.metrics import detection_metrics
from backdoor_study.models.base import build_model
from backdoor_study.training import load_checkpoint
from tests.conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=600, t=12, seed=5), path)
    return path


def trained(cohort: Path, runs_root: Path, model: str):
    """A backdoored model (rare-value Temp trigger on 10% of training stays), its training batch,
    trained labels and the poisoned mask."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=parquet",
                f"data.path={cohort}",
                f"runs_root={runs_root}",
                f"model={model}",
                "trigger=rare_value",
                "trigger.variables=[Temp]",
                "trigger.window=[8,12]",
                "poison_rate=0.1",
                "epochs=8",
                "optimizer.lr=3e-3",
                "trainer.batch_size=64",
                "trainer.progress=false",
                "trainer.selection=last",
                "metrics.bootstrap=0",
                "clean_reference=false",
            ],
        )
    metrics = train.run(cfg)
    prepared = prepare(cfg)
    net = build_model(cfg.model, prepared.spec)
    net.load_state_dict(load_checkpoint(Path(cfg.run_dir) / "final_model.pt")["model_state"])
    is_poisoned = np.zeros(len(prepared.labels["train"]), dtype=bool)
    is_poisoned[prepared.poison.poisoned_indices] = True
    return metrics, net, prepared.batches["train"], prepared.labels["train"], is_poisoned


@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_saliency_finds_the_poisoned_stays(cohort, tmp_path, model):
    metrics, net, batch, labels, is_poisoned = trained(cohort, tmp_path, model)
    assert metrics["ASR"] > 0.8, metrics["ASR"]  # the backdoor is in: something to find
    det = build_detector("saliency")
    net.train()
    t0 = time.perf_counter()
    attributions = det.attributions(net, batch, labels)
    seconds = time.perf_counter() - t0
    assert net.training, "attributions must restore the model's mode"
    assert attributions.shape == tuple(batch["x"].shape)
    scores = det.score(attributions, labels.numpy())
    flagged = det.flag(
        scores, labels.numpy(), expected_rate=is_poisoned[labels.numpy() == 0].mean()
    )
    m = detection_metrics(is_poisoned, scores, flagged, labels.numpy(), target_label=0)
    assert m["auroc"] > 0.9, m
    assert m["recall"] > 0.6, m
    assert seconds < 10.0  # ~420 stays; the budget is 5 s per 1000 on 2 cores

    maps = det.class_attribution_maps(attributions, labels.numpy())
    temp = 2  # variables: HR, SysABP, Temp, Lactate, Creatinine
    target_map = maps[0]
    assert target_map.shape == tuple(batch["x"].shape[1:])
    assert target_map.sum() == pytest.approx(1.0)
    y = labels.numpy()
    split = np.where(is_poisoned, 1, np.where(y == 0, 0, 2))  # clean target / poisoned / other
    by_group = det.class_attribution_maps(attributions, split)
    # where the trigger sits: the poisoned stays' attribution leans on Temp in hours 8-11,
    # the clean stays of the same (target) class' does not
    trigger_cells = (slice(8, 12), temp)
    assert by_group[1][trigger_cells].sum() > 0.25
    assert by_group[1][trigger_cells].sum() > 2 * by_group[0][trigger_cells].sum()


def test_saliency_rejects_bad_inputs() -> None:
    det = build_detector("saliency")
    with pytest.raises(ValueError, match=r"attributions must be \(N, T, F\)"):
        det.score(np.zeros((4, 5)), np.zeros(4, dtype=np.int64))
    static_only = {"x": torch.zeros(4, 0, 0), "mask": torch.zeros(4, 0, 0)}
    with pytest.raises(ValueError, match="static-only"):
        det.attributions(torch.nn.Identity(), static_only, torch.zeros(4, dtype=torch.long))


def test_window_units_sum_blocks_of_hours_and_keep_a_short_last_block() -> None:
    attributions = np.arange(2 * 7 * 3, dtype=np.float64).reshape(2, 7, 3)  # T=7, 3 variables
    det = build_detector("saliency", unit="window", window_hours=3)
    units = det.evidence_per_unit(attributions)
    # blocks of hours [0, 3), [3, 6), [6, 7): 3 blocks x 3 variables
    assert units.shape == (2, 9)
    expected = np.concatenate([attributions[:, h : h + 3].sum(axis=1) for h in (0, 3, 6)], axis=1)
    np.testing.assert_allclose(units, expected)
    whole = build_detector("saliency", unit="variable").evidence_per_unit(attributions)
    np.testing.assert_allclose(units.reshape(2, 3, 3).sum(axis=1), whole)
    with pytest.raises(ValueError, match="window_hours=0 is invalid"):
        build_detector("saliency", window_hours=0)
