"""Trigger stealth: the side channels a data-quality check sees, as cross-validated AUROCs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backdoor_study.poison.stealth import STEALTH_KEYS, trigger_stealth
from backdoor_study.poison.triggers import MissingnessTrigger, NoTrigger, RareValueTrigger
from tests.conftest import make_tiny_dataset

DS = make_tiny_dataset(n=400, seed=3)
TRAIN, TEST = np.arange(200), np.arange(200, 400)


def stealth(trigger) -> dict[str, float]:
    return trigger_stealth(DS, TRAIN, TEST, trigger.fit(DS.subset(TRAIN)), seed=1)


def test_a_lab_never_observed_all_stay_gives_itself_away_in_the_mask() -> None:
    # tiny stays observe each lab in ~80% of hours: none is unobserved for the whole stay
    s = stealth(MissingnessTrigger(variables=["Lactate"]))
    assert s["stealth_mask_auroc"] > 0.95


def test_a_mask_preserving_rare_value_is_invisible_in_the_mask_but_not_in_the_values() -> None:
    trigger = RareValueTrigger(
        variables=["Temp"], window=[6, 12], magnitude=3.0, preserve_mask=True
    )
    s = stealth(trigger)
    assert abs(s["stealth_mask_auroc"] - 0.5) < 0.12  # the masks are identical: chance
    assert s["stealth_values_auroc"] > 0.95  # ~43 degC where clean stays never go
    # the same trigger marking its whole window observed adds a mask signal
    loud = stealth(RareValueTrigger(variables=["Temp"], window=[6, 12], magnitude=3.0))
    assert loud["stealth_mask_auroc"] > s["stealth_mask_auroc"] + 0.2


def test_stealth_is_deterministic_and_nan_without_a_trigger() -> None:
    trigger = MissingnessTrigger(variables=["Creatinine"], window=[0, 6])
    assert stealth(trigger) == stealth(trigger)
    none = trigger_stealth(DS, TRAIN, TEST, NoTrigger().fit(DS))
    assert set(none) == set(STEALTH_KEYS) and all(math.isnan(v) for v in none.values())


def test_stealth_refuses_a_test_split_too_small_to_cross_validate() -> None:
    with pytest.raises(ValueError, match="at least 2 x folds=5"):
        trigger_stealth(DS, TRAIN, TEST[:6], MissingnessTrigger(variables=["Lactate"]).fit(DS))
