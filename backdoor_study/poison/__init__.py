"""Poisoning: a clean dataset and its training split -> a poisoned copy plus the poisoned indices.

This package owns which training stays are poisoned and how (backdoor trigger + relabelling, or
the classic feature-noise and label-flip attacks, which share the sampling and bookkeeping), and
the triggered test set used to measure the attack success rate. It changes only training stays at
the poisoned positions; it must not touch validation/test stays, imputation or normalisation
(those are fitted later on the poisoned training split).

Reproducibility: everything random is drawn from one generator,
``np.random.default_rng([seed, POISON_STREAM])``, and triggers are fitted on the CLEAN training
split, so (config, dataset) alone determine ``poisoned_indices`` and the poisoned dataset's digest.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from backdoor_study.config import ATTACKS, ConfigError
from backdoor_study.data.schema import ClinicalDataset
from backdoor_study.poison.triggers import (
    NoTrigger,
    Trigger,
    _as_index_array,
    build_trigger,
    observed_values,
)

__all__ = [
    "POISON_STREAM",
    "SOURCES",
    "PoisonResult",
    "Trigger",
    "build_trigger",
    "poison_dataset",
    "poisoned_test_set",
]

#: second word of the generator seed: keeps poisoning draws independent of other seeded streams
POISON_STREAM = 0xB4D
SOURCES = ("dirty_label", "clean_label")
CLASSIC_ATTACKS = ("feature_noise", "label_flip")


@dataclass
class PoisonResult:
    """The outcome of :func:`poison_dataset`.

    ``dataset``: a full copy of the input in which only training stays at the poisoned positions
    differ. ``poisoned_indices``: sorted int64 positions INTO ``train_idx`` (so
    ``train_idx[poisoned_indices]`` are the stays changed). ``trigger``: the trigger fitted on the
    clean training split (``NoTrigger`` for the classic attacks). ``details``: plain values for the
    run metadata.
    """

    dataset: ClinicalDataset
    poisoned_indices: np.ndarray
    trigger: Trigger
    details: dict[str, Any] = field(default_factory=dict)

    def without(self, excluded: np.ndarray, n_train: int) -> PoisonResult:
        """The result after the training positions ``excluded`` are removed from the split.

        ``excluded``: sorted, unique positions into the ``n_train``-stay training split (a
        sanitized retrain leaves them out). The surviving poisoned stays are re-indexed into the
        reduced split, so ``poisoned_indices`` keeps meaning "positions into the training split".
        The dataset is unchanged: excluded stays are simply no longer part of the split.
        """
        keep = np.setdiff1d(np.arange(n_train, dtype=np.int64), excluded)
        survived = self.poisoned_indices[np.isin(self.poisoned_indices, keep)]
        details = {
            **self.details,
            "n_excluded": int(excluded.size),
            "n_poisoned_excluded": int(self.poisoned_indices.size - survived.size),
            "n_poisoned_remaining": int(survived.size),
        }
        remapped = np.searchsorted(keep, survived).astype(np.int64)
        return PoisonResult(self.dataset, remapped, self.trigger, details)


def poison_dataset(
    ds: ClinicalDataset,
    train_idx: np.ndarray,
    *,
    attack_cfg: Any,
    trigger_cfg: Any,
    poison_rate: float,
    source: str = "dirty_label",
    seed: int,
) -> PoisonResult:
    """Poison ``round(poison_rate * len(train_idx))`` training stays of ``ds``.

    - ``attack=backdoor``: stamp the trigger. ``source=dirty_label`` draws non-target stays and
      relabels them to ``trigger.target_label``; ``source=clean_label`` draws target-class stays
      and keeps their labels.
    - ``attack=feature_noise``: add Gaussian noise of ``noise_std`` x each feature's clean training
      std to the observed grid cells and numeric statics of stays drawn from the whole split.
    - ``attack=label_flip``: change the labels of stays drawn from the whole split to a different
      class, uniformly at random.

    ``attack_cfg`` is the ``attack`` node (or a mapping / an object with ``name``, ``noise_std``);
    ``trigger_cfg`` the ``trigger`` node (must be ``none`` for the classic attacks).
    """
    attack = str(_get(attack_cfg, "name", "backdoor"))
    if attack not in ATTACKS:
        raise ConfigError(f"attack.name={attack!r} is invalid: expected one of {list(ATTACKS)}")
    source = str(source.value if isinstance(source, Enum) else source)
    if source not in SOURCES:
        raise ConfigError(f"poison.source={source!r} is invalid: expected one of {list(SOURCES)}")
    rate = _check_rate(poison_rate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer >= 0")
    train_idx = _as_index_array(train_idx, ds.n_stays, keep_order=True)
    if train_idx.size == 0:
        raise ValueError("train_idx is empty: there is no training split to poison")

    trigger = build_trigger(trigger_cfg)
    is_none = isinstance(trigger, NoTrigger)
    if attack in CLASSIC_ATTACKS:
        if not is_none:
            raise ConfigError(
                f"attack={attack} has no test-time trigger, so trigger must be 'none' "
                f"(got trigger={trigger.name}); use attack=backdoor to study a trigger"
            )
        if source != "dirty_label":
            raise ConfigError(
                f"poison.source={source!r} applies only to attack=backdoor; attack={attack} draws "
                "from all training stays (leave poison.source=dirty_label)"
            )
    elif is_none and rate > 0:
        raise ConfigError(
            f"attack=backdoor with trigger=none and poison_rate={rate} would only relabel stays; "
            "choose a trigger (trigger=rare_value, ...) or set poison_rate=0"
        )
    _check_target(trigger, ds)
    # Fit on the CLEAN training split, before anything is changed.
    trigger.fit(ds.subset(train_idx))

    labels = ds.y[train_idx]
    if attack != "backdoor":
        pool, pool_desc = np.arange(train_idx.size, dtype=np.int64), "training"
    elif source == "dirty_label":
        pool = np.flatnonzero(labels != trigger.target_label).astype(np.int64)
        pool_desc = f"non-target (label != {trigger.target_label}) training"
    else:
        pool = np.flatnonzero(labels == trigger.target_label).astype(np.int64)
        pool_desc = f"target-class (label == {trigger.target_label}) training"

    n_train = int(train_idx.size)
    n_poison = int(round(rate * n_train))
    details: dict[str, Any] = {
        "attack": attack,
        "source": source if attack == "backdoor" else "all_training",
        "poison_rate": rate,
        "seed": int(seed),
        "n_train": n_train,
        "n_poisoned": n_poison,
        "n_source_available": int(pool.size),
        "trigger": trigger.describe(),
    }
    if attack == "backdoor":
        details["target_label"] = trigger.target_label
    if rate > 0 and n_poison == 0:
        warnings.warn(
            f"poison_rate={rate} of {n_train} training stays rounds to 0 poisoned stays: "
            "nothing is poisoned (raise poison_rate or use a larger training split)",
            stacklevel=2,
        )
    if n_poison > pool.size:
        raise ConfigError(
            f"poison_rate={rate} needs {n_poison} poisoned stays (round({rate} x {n_train} training "
            f"stays)) but only {pool.size} {pool_desc} stays exist; lower poison_rate"
        )
    if n_poison == 0:
        return PoisonResult(copy.deepcopy(ds), np.empty(0, dtype=np.int64), trigger, details)

    rng = np.random.default_rng([int(seed), POISON_STREAM])
    chosen = np.sort(rng.choice(pool, size=n_poison, replace=False)).astype(np.int64)
    stays = train_idx[chosen]
    if attack == "backdoor":
        out = trigger.apply(ds, stays)
        if source == "dirty_label":
            out.y[stays] = trigger.target_label
    elif attack == "feature_noise":
        noise_std = float(_get(attack_cfg, "noise_std", 1.0))
        if not noise_std > 0:
            raise ConfigError(f"attack.noise_std={noise_std!r} is invalid: expected a number > 0")
        out, feature_std = _add_feature_noise(ds, train_idx, stays, noise_std, rng)
        details.update(noise_std=noise_std, feature_std=feature_std)
    else:
        out = copy.deepcopy(ds)
        if ds.n_classes < 2:
            raise ConfigError(
                f"attack=label_flip needs >= 2 classes; '{ds.name}' has {ds.n_classes}"
            )
        shift = rng.integers(1, ds.n_classes, size=stays.size)
        out.y[stays] = (ds.y[stays] + shift) % ds.n_classes
    out.validate()
    return PoisonResult(out, chosen, trigger, details)


def poisoned_test_set(
    ds: ClinicalDataset, test_idx: np.ndarray, trigger: Trigger
) -> tuple[ClinicalDataset, np.ndarray]:
    """The test split with the (fitted) trigger stamped on every stay whose label != target.

    Returns the test stays in ``test_idx`` order (labels unchanged: the true labels) and the bool
    ``triggered_mask`` saying which were stamped. Target-label stays are left as they are, so the
    attack success rate is measured on stays the trigger must flip. With ``NoTrigger`` (clean runs
    and the classic attacks) nothing is stamped and the mask is all False.
    """
    test = ds.subset(np.asarray(test_idx, dtype=np.int64))
    if isinstance(trigger, NoTrigger):
        return test, np.zeros(test.n_stays, dtype=bool)
    _check_target(trigger, ds)
    triggered = test.y != trigger.target_label
    return trigger.apply(test, np.flatnonzero(triggered)), triggered


# ---------------------------------------------------------------------------- helpers
def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, str):
        return cfg if key == "name" else default
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _check_rate(poison_rate: Any) -> float:
    try:
        rate = float(poison_rate)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0.0 <= rate < 1.0:
        raise ConfigError(
            f"poison_rate={poison_rate!r} is invalid: expected a fraction of the training split "
            "in [0, 1)"
        )
    return rate


def _check_target(trigger: Trigger, ds: ClinicalDataset) -> None:
    if not 0 <= trigger.target_label < ds.n_classes:
        raise ConfigError(
            f"trigger.target_label={trigger.target_label} is invalid: expected a class index in "
            f"[0, {ds.n_classes}) for classes {ds.class_names}"
        )


def _add_feature_noise(
    ds: ClinicalDataset,
    train_idx: np.ndarray,
    stays: np.ndarray,
    noise_std: float,
    rng: np.random.Generator,
) -> tuple[ClinicalDataset, dict[str, float]]:
    """Gaussian noise (noise_std x clean training std) on observed cells and numeric statics."""
    train = ds.subset(train_idx)
    x_std = np.array([_std(observed_values(train, j)) for j in range(ds.n_features)])
    s_std = np.array(
        [_std(observed_values(train, j, static=True)) for j in range(len(ds.static_num_names))]
    )
    out = copy.deepcopy(ds)
    x_noise = rng.standard_normal((stays.size, ds.n_steps, ds.n_features)) * noise_std * x_std
    s_noise = rng.standard_normal((stays.size, len(ds.static_num_names))) * noise_std * s_std
    # unobserved cells and unknown statics keep their original (NaN) bits
    x = ds.x[stays]
    out.x[stays] = np.where(ds.mask[stays], (x + x_noise).astype(np.float32), x)
    s = ds.static_num[stays]
    out.static_num[stays] = np.where(np.isnan(s), s, (s + s_noise).astype(np.float32))
    names = [*ds.variables, *ds.static_num_names]
    return out, {n: float(v) for n, v in zip(names, [*x_std, *s_std])}


def _std(values: np.ndarray) -> float:
    """Population std of the observed values; 0 (no noise) where a feature is never observed."""
    return float(values.std()) if values.size else 0.0
