"""Poisoning: who is drawn, what changes, what is refused, and that it all reproduces from the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoor_study.config import ConfigError
from backdoor_study.data.schema import ClinicalDataset
from backdoor_study.poison import PoisonResult, poison_dataset, poisoned_test_set
from backdoor_study.poison.triggers import NoTrigger, RareValueTrigger
from tests.conftest import make_tiny_dataset
from tests.test_triggers import compose_train, trigger_cfg

PROPERTY = settings(max_examples=25, deadline=None)
N, N_TRAIN = 120, 80


def split(ds: ClinicalDataset, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A shuffled (unsorted) train/test split, so positions and stay indices differ."""
    perm = np.random.default_rng(seed).permutation(ds.n_stays)
    return perm[:N_TRAIN], perm[N_TRAIN:]


def attack_cfg(name: str):
    return compose_train(f"attack={name}").attack


def poison(
    ds: ClinicalDataset,
    train_idx: np.ndarray,
    *,
    attack: str = "backdoor",
    trigger: str = "rare_value",
    trigger_overrides: tuple[str, ...] = (),
    rate: float = 0.1,
    source: str = "dirty_label",
    seed: int = 0,
) -> PoisonResult:
    return poison_dataset(
        ds,
        train_idx,
        attack_cfg=attack_cfg(attack),
        trigger_cfg=trigger_cfg(trigger, *trigger_overrides),
        poison_rate=rate,
        source=source,
        seed=seed,
    )


def stays_changed(before: ClinicalDataset, after: ClinicalDataset) -> np.ndarray:
    """Stay positions where any array differs bit for bit."""
    differs = np.zeros(before.n_stays, dtype=bool)
    for name in ("x", "mask", "static_num", "static_cat", "y", "stay_id", "patient_id"):
        b, a = getattr(before, name), getattr(after, name)
        b = b.view(np.uint32) if b.dtype == np.float32 else b
        a = a.view(np.uint32) if a.dtype == np.float32 else a
        differs |= (b != a).reshape(before.n_stays, -1).any(axis=1)
    return np.flatnonzero(differs)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.filterwarnings("ignore:poison_rate=.*rounds to 0")
@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0.0, 0.3),
    source=st.sampled_from(["dirty_label", "clean_label"]),
    trigger=st.sampled_from(["rare_value", "missingness", "pattern", "correlation", "hybrid"]),
)
def test_poisoning_reproduces_from_config_and_dataset(seed, rate, source, trigger) -> None:
    ds = make_tiny_dataset(n=N, prevalence=0.5)
    train_idx, _ = split(ds)
    kwargs = dict(trigger=trigger, rate=rate, source=source, seed=seed)
    first = poison(ds, train_idx, **kwargs)
    again = poison(make_tiny_dataset(n=N, prevalence=0.5), train_idx.copy(), **kwargs)
    assert first.poisoned_indices.dtype == np.int64
    assert np.array_equal(first.poisoned_indices, again.poisoned_indices)
    assert first.dataset.digest() == again.dataset.digest()
    assert first.details == again.details
    p = first.poisoned_indices
    assert np.array_equal(p, np.unique(p)) and (p.size == 0 or 0 <= p.min() <= p.max() < N_TRAIN)
    assert p.size == first.details["n_poisoned"] == round(rate * N_TRAIN)
    # only the training stays at the poisoned positions differ
    assert set(stays_changed(ds, first.dataset)) <= set(train_idx[p])


def test_a_different_seed_draws_different_stays() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    a = poison(ds, train_idx, seed=1).poisoned_indices
    b = poison(ds, train_idx, seed=2).poisoned_indices
    assert not np.array_equal(a, b)


@PROPERTY
@given(seed=st.integers(0, 10_000), target=st.sampled_from([0, 1]))
def test_dirty_label_draws_non_target_stays_and_relabels_them(seed, target) -> None:
    ds = make_tiny_dataset(n=N, prevalence=0.5)
    train_idx, _ = split(ds)
    result = poison(ds, train_idx, trigger_overrides=(f"trigger.target_label={target}",), seed=seed)
    stays = train_idx[result.poisoned_indices]
    assert (ds.y[stays] != target).all()
    assert (result.dataset.y[stays] == target).all()
    assert result.details["n_source_available"] == int((ds.y[train_idx] != target).sum())
    assert set(stays_changed(ds, result.dataset)) == set(stays)
    value = result.trigger.values_[0]
    assert (result.dataset.x[stays, 6:12, 0] == value).all()


@PROPERTY
@given(seed=st.integers(0, 10_000), target=st.sampled_from([0, 1]))
def test_clean_label_draws_target_stays_and_keeps_labels(seed, target) -> None:
    ds = make_tiny_dataset(n=N, prevalence=0.5)
    train_idx, _ = split(ds)
    result = poison(
        ds,
        train_idx,
        trigger_overrides=(f"trigger.target_label={target}",),
        source="clean_label",
        seed=seed,
    )
    stays = train_idx[result.poisoned_indices]
    assert stays.size == round(0.1 * N_TRAIN)
    assert (ds.y[stays] == target).all()
    assert np.array_equal(result.dataset.y, ds.y)
    assert result.details["source"] == "clean_label"


def test_the_trigger_is_fitted_on_the_clean_training_split() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    result = poison(ds, train_idx, rate=0.2)
    reference = RareValueTrigger(variables=["HR"], window=[6, 12]).fit(ds.subset(train_idx))
    assert result.trigger.values_[0] == reference.values_[0]
    assert result.details["trigger"]["values"] == {"HR": float(reference.values_[0])}


# ---------------------------------------------------------------------------- refusals
def test_a_rate_needing_more_stays_than_the_source_has_is_refused_with_counts() -> None:
    ds = make_tiny_dataset(n=N, prevalence=0.3)
    train_idx, _ = split(ds)
    available = int((ds.y[train_idx] == 0).sum())
    rate = 0.9
    needed = round(rate * N_TRAIN)
    assert needed > available
    with pytest.raises(ValueError) as err:
        poison(ds, train_idx, rate=rate, source="clean_label")
    message = str(err.value)
    assert f"needs {needed}" in message and f"only {available}" in message


def test_a_rate_rounding_to_zero_warns_and_poisons_nothing() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    with pytest.warns(UserWarning, match="rounds to 0"):
        result = poison(ds, train_idx, rate=0.005)
    assert result.poisoned_indices.size == 0
    assert result.dataset.digest() == ds.digest()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan])
def test_invalid_rates_are_refused(rate: float) -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    with pytest.raises(ValueError, match=r"poison_rate=.*\[0, 1\)"):
        poison(ds, train_idx, rate=rate)


def test_duplicate_training_indices_are_refused() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx = np.array([0, 1, 2, 2, 3] * 4)
    with pytest.raises(ValueError, match="duplicate"):
        poison(ds, train_idx)


@pytest.mark.parametrize("attack", ["feature_noise", "label_flip"])
def test_classic_attacks_refuse_a_trigger(attack: str) -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    with pytest.raises(ConfigError, match="trigger must be 'none'"):
        poison(ds, train_idx, attack=attack, trigger="rare_value")


def test_a_backdoor_without_a_trigger_is_refused() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    with pytest.raises(ConfigError, match="trigger=none"):
        poison(ds, train_idx, trigger="none", rate=0.1)


def test_a_target_label_outside_the_classes_is_refused() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    with pytest.raises(ConfigError, match=r"trigger\.target_label=2"):
        poison(ds, train_idx, trigger_overrides=("trigger.target_label=2",))


@pytest.mark.parametrize("attack", ["backdoor", "feature_noise", "label_flip"])
def test_rate_zero_returns_an_unchanged_copy(attack: str) -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    trigger = "rare_value" if attack == "backdoor" else "none"
    result = poison(ds, train_idx, attack=attack, trigger=trigger, rate=0.0)
    assert result.dataset is not ds and result.dataset.digest() == ds.digest()
    assert result.poisoned_indices.dtype == np.int64 and result.poisoned_indices.size == 0


# ---------------------------------------------------------------------------- classic attacks
@PROPERTY
@given(seed=st.integers(0, 10_000))
def test_feature_noise_changes_only_poisoned_stays_features(seed) -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, _ = split(ds)
    result = poison(ds, train_idx, attack="feature_noise", trigger="none", rate=0.25, seed=seed)
    out, stays = result.dataset, train_idx[result.poisoned_indices]
    assert result.details["n_source_available"] == N_TRAIN  # drawn from the whole split
    assert set(stays_changed(ds, out)) == set(stays)
    assert np.array_equal(out.y, ds.y) and np.array_equal(out.mask, ds.mask)
    assert np.array_equal(out.static_cat, ds.static_cat)
    observed = ds.mask[stays]
    assert (out.x[stays][observed] != ds.x[stays][observed]).all()
    assert np.isnan(out.x[stays][~observed]).all()
    assert (out.static_num[stays] != ds.static_num[stays]).all()


def test_feature_noise_scales_with_each_features_training_std() -> None:
    ds = make_tiny_dataset(n=400)
    train_idx = np.arange(300)
    result = poison_dataset(
        ds,
        train_idx,
        attack_cfg=compose_train("attack=feature_noise", "attack.noise_std=0.5").attack,
        trigger_cfg=trigger_cfg("none"),
        poison_rate=0.5,
        seed=0,
    )
    stays = train_idx[result.poisoned_indices]
    for j, var in enumerate(ds.variables):
        obs = ds.mask[stays, :, j]
        delta = (result.dataset.x[stays, :, j] - ds.x[stays, :, j])[obs]
        expected = 0.5 * result.details["feature_std"][var]
        assert abs(delta.std() / expected - 1) < 0.1, var


@pytest.mark.parametrize("n_classes", [2, 3])
@PROPERTY
@given(seed=st.integers(0, 10_000))
def test_label_flip_always_changes_to_a_different_class(n_classes, seed) -> None:
    ds = make_tiny_dataset(n=N, n_classes=n_classes)
    train_idx, _ = split(ds)
    result = poison(ds, train_idx, attack="label_flip", trigger="none", rate=0.3, seed=seed)
    stays = train_idx[result.poisoned_indices]
    out = result.dataset
    assert (out.y[stays] != ds.y[stays]).all()
    assert ((out.y >= 0) & (out.y < n_classes)).all()
    assert set(stays_changed(ds, out)) == set(stays)
    assert np.array_equal(out.x.view(np.uint32), ds.x.view(np.uint32))
    assert isinstance(result.trigger, NoTrigger)


def test_label_flip_on_three_classes_reaches_both_other_classes() -> None:
    ds = make_tiny_dataset(n=600, n_classes=3)
    train_idx = np.arange(500)
    result = poison(ds, train_idx, attack="label_flip", trigger="none", rate=0.5)
    stays = train_idx[result.poisoned_indices]
    pairs = set(zip(ds.y[stays].tolist(), result.dataset.y[stays].tolist()))
    assert pairs == {(a, b) for a in range(3) for b in range(3) if a != b}


# ---------------------------------------------------------------------------- test-time trigger
@pytest.mark.parametrize("target", [0, 1])
def test_poisoned_test_set_triggers_only_non_target_stays(target: int) -> None:
    ds = make_tiny_dataset(n=N, prevalence=0.4)
    train_idx, test_idx = split(ds)
    result = poison(ds, train_idx, trigger_overrides=(f"trigger.target_label={target}",))
    test, triggered = poisoned_test_set(result.dataset, test_idx, result.trigger)
    clean = ds.subset(test_idx)
    assert np.array_equal(test.stay_id, ds.stay_id[test_idx])  # aligned with test_idx
    assert np.array_equal(triggered, clean.y != target)
    assert np.array_equal(test.y, clean.y)  # the true labels
    assert set(stays_changed(clean, test)) == set(np.flatnonzero(triggered))
    expected = result.trigger.apply(clean, np.flatnonzero(triggered))
    assert test.digest() == expected.digest()


def test_poisoned_test_set_without_a_trigger_stamps_nothing() -> None:
    ds = make_tiny_dataset(n=N)
    train_idx, test_idx = split(ds)
    result = poison(ds, train_idx, attack="label_flip", trigger="none")
    test, triggered = poisoned_test_set(result.dataset, test_idx, result.trigger)
    assert not triggered.any() and test.digest() == ds.subset(test_idx).digest()
