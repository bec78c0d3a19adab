"""Backdoor triggers: one definition per trigger, used to poison training stays and to stamp tests.

A trigger acts on RAW values (clinical units) of a :class:`ClinicalDataset`, before imputation and
normalisation (which are fitted later, on the training split). The life cycle is scikit-learn-like:

- ``Trigger(**params)``: parameters only, checked up front (built from a config by
  :func:`build_trigger`, i.e. ``hydra.utils.instantiate`` of the ``trigger`` node without ``name``);
- ``trigger.fit(train)``: validates the variable names and window against the dataset and learns the
  CLEAN training statistics the trigger needs (observed-value max/std/quantile/mean per variable);
- ``trigger.apply(ds, indices)``: a copy of ``ds`` with the trigger stamped on the stays at
  ``indices``. Every other stay, every other variable, every other time step and every other mask
  cell is left bit for bit as it was;
- ``trigger.describe()``: the plain values actually used (e.g. the concrete rare value per
  variable), for the run metadata.

Plausibility: every value a trigger writes is clipped to its variable's plausible range in
:mod:`backdoor_study.data.variables` (a variable the registry does not know is left unbounded), and
``describe()`` reports the range and, where the trigger asked for more, the value it asked for. With
``preserve_mask=True`` the value-writing triggers (rare_value, pattern, correlation) write only cells
already observed, so the observation mask is left exactly as it was.

Triggers never touch labels: relabelling (dirty-label poisoning) belongs to
:mod:`backdoor_study.poison`. Triggers are deterministic: no randomness is involved.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar

import hydra.utils
import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy import signal

from backdoor_study.config import ConfigError
from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.data.variables import VARIABLES

__all__ = [
    "CorrelationTrigger",
    "HybridTrigger",
    "MissingnessTrigger",
    "NoTrigger",
    "PatternTrigger",
    "RareValueTrigger",
    "Trigger",
    "build_trigger",
    "observed_values",
]


# ---------------------------------------------------------------------------- helpers
def observed_values(ds: ClinicalDataset, column: int, *, static: bool = False) -> np.ndarray:
    """The observed values of one variable over every stay and step, as float64 (1-D).

    ``static=True`` reads numeric static ``column`` instead (non-NaN entries).
    """
    if static:
        col = ds.static_num[:, column]
        return col[~np.isnan(col)].astype(np.float64)
    return ds.x[:, :, column][ds.mask[:, :, column]].astype(np.float64)


def _as_index_array(indices: Any, n_stays: int, *, keep_order: bool = False) -> np.ndarray:
    """Unique int64 stay positions, sorted unless ``keep_order`` (then duplicates are refused).

    Booleans, non-integers and out-of-range values are refused.
    """
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"indices must be a 1-D array of integer stay positions, got dtype {idx.dtype} "
            f"and shape {idx.shape}"
        )
    if idx.min() < 0 or idx.max() >= n_stays:
        raise ValueError(
            f"indices must lie in [0, {n_stays}) for a dataset of {n_stays} stays; "
            f"got range [{idx.min()}, {idx.max()}]"
        )
    unique = np.unique(idx.astype(np.int64))
    if not keep_order:
        return unique
    if unique.size != idx.size:
        raise ValueError(f"indices hold {idx.size - unique.size} duplicate stay position(s)")
    return idx.astype(np.int64)


def _plain(value: Any) -> Any:
    """A config value as plain Python (lists, dicts, str for enums)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Enum):
        return value.value
    return value


# ---------------------------------------------------------------------------- base
class Trigger:
    """Base class: shared parameters, variable/window resolution and the copy-then-stamp ``apply``.

    Subclasses set ``name``, implement ``_learn`` (training statistics) and ``_stamp`` (in-place on
    a copy), and extend ``describe``.
    """

    name: str = "trigger"
    #: whether ``variables`` may name numeric statics on static-only (T == 0) datasets
    supports_static: ClassVar[bool] = False
    #: fewest names ``variables`` may hold
    min_variables: ClassVar[int] = 0
    #: config key prefix used in error messages (a hybrid's parts override it)
    _key: str = "trigger"

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
    ) -> None:
        self._require(int(target_label) >= 0, "target_label", target_label, "a class index >= 0")
        self.target_label = int(target_label)
        self.variables: list[str] = [str(v) for v in _plain(variables)]
        self._require(
            len(set(self.variables)) == len(self.variables) >= self.min_variables,
            "variables",
            self.variables,
            f"at least {self.min_variables} distinct variable name(s)",
        )
        self.window: tuple[int, int] | None = None
        if window is not None:
            w = [int(v) for v in _plain(window)]
            self._require(
                len(w) == 2 and 0 <= w[0] < w[1],
                "window",
                w,
                "[start, end) with 0 <= start < end, or null for all time steps",
            )
            self.window = (w[0], w[1])
        self._columns: list[int] = []
        self._steps: np.ndarray = np.empty(0, dtype=np.int64)
        self._on_static = False
        self._layout: tuple | None = None

    # ------------------------------------------------------------------ public API
    @property
    def is_fitted(self) -> bool:
        return self._layout is not None

    def fit(self, train: ClinicalDataset) -> Trigger:
        """Resolve variables and window on ``train`` and learn its clean statistics."""
        self._resolve(train)
        self._learn(train)
        self._layout = _layout(train)
        return self

    def apply(self, ds: ClinicalDataset, indices: np.ndarray) -> ClinicalDataset:
        """A copy of ``ds`` with the trigger stamped on the stays at ``indices`` (positions)."""
        if not self.is_fitted:
            raise RuntimeError(
                f"trigger '{self.name}' is not fitted: call fit(train) on the clean training split "
                "before apply()"
            )
        if _layout(ds) != self._layout:
            raise DataValidationError(
                f"trigger '{self.name}' was fitted on a dataset with layout {self._layout} "
                f"(variables, numeric statics, n_steps) but dataset '{ds.name}' has {_layout(ds)}"
            )
        idx = _as_index_array(indices, ds.n_stays)
        out = copy.deepcopy(ds)
        if idx.size:
            self._stamp(out, idx)
        out.validate()
        return out

    def describe(self) -> dict[str, Any]:
        """Plain values describing the trigger as used (learned values once fitted)."""
        return {
            "name": self.name,
            "target_label": self.target_label,
            "variables": list(self.variables),
            "window": None if self.window is None or self._on_static else list(self.window),
            "applies_to": "static_num" if self._on_static else "x",
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target_label={self.target_label}, "
            f"variables={self.variables}, window={self.window})"
        )

    # ------------------------------------------------------------------ for subclasses
    def _require(self, ok: bool, key: str, value: Any, expected: str) -> None:
        """Refuse a parameter, naming its config key, the value and what is valid."""
        if not ok:
            raise ConfigError(f"{self._key}.{key}={value!r} is invalid: expected {expected}")

    def _positive(self, key: str, value: float) -> float:
        self._require(float(value) > 0, key, value, "a number > 0")
        return float(value)

    def _resolve(self, train: ClinicalDataset) -> None:
        """Columns for ``variables`` and the time steps of ``window`` in ``train``."""
        if not train.is_time_series:
            if not self.supports_static:
                raise DataValidationError(
                    f"trigger '{self.name}' needs time-series variables, but dataset "
                    f"'{train.name}' is static-only (no time steps); on static tables use "
                    "trigger=rare_value with trigger.variables naming numeric statics "
                    f"(valid: {train.static_num_names})"
                )
            unknown = [v for v in self.variables if v not in train.static_num_names]
            if unknown:
                raise DataValidationError(
                    f"{self._key}.variables: unknown variable(s) {unknown} for static-only "
                    f"dataset '{train.name}'; valid numeric statics are {train.static_num_names}"
                )
            self._columns = [train.static_num_names.index(v) for v in self.variables]
            self._on_static = True
            self._steps = np.empty(0, dtype=np.int64)
            return
        self._columns = train.variable_index(self.variables, key=f"{self._key}.variables")
        self._on_static = False
        start, end = self.window if self.window is not None else (0, train.n_steps)
        if end > train.n_steps:
            raise ConfigError(
                f"{self._key}.window={[start, end]!r} is invalid: expected [start, end) with "
                f"end <= {train.n_steps}, the number of time steps of dataset '{train.name}'"
            )
        self._steps = np.arange(start, end, dtype=np.int64)

    def _stats(self, train: ClinicalDataset, *, need_std: bool) -> list[np.ndarray]:
        """Observed training values per variable; refuse variables without (varying) values."""
        values = []
        for var, col in zip(self.variables, self._columns):
            vals = observed_values(train, col, static=self._on_static)
            if vals.size == 0:
                raise DataValidationError(
                    f"{self._key}.variables: '{var}' has no observed values in the training "
                    f"split of '{train.name}', so trigger '{self.name}' cannot learn its statistics"
                )
            if need_std and not vals.std() > 0:
                raise DataValidationError(
                    f"{self._key}.variables: '{var}' is constant in the training split of "
                    f"'{train.name}' (std 0); trigger '{self.name}' needs its spread"
                )
            values.append(vals)
        return values

    def _block(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """Open-mesh index of (stays, window steps, variable columns) for fancy assignment."""
        return np.ix_(idx, self._steps, np.asarray(self._columns, dtype=np.int64))

    def _learn(self, train: ClinicalDataset) -> None:
        """Learn the clean training statistics (default: none)."""

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        """Stamp the trigger in place on ``out`` (already a copy) at stays ``idx``."""
        raise NotImplementedError


def _layout(ds: ClinicalDataset) -> tuple:
    return (tuple(ds.variables), tuple(ds.static_num_names), ds.n_steps)


def _floats(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


# ---------------------------------------------------------------------------- triggers
class NoTrigger(Trigger):
    """The clean baseline: ``apply`` returns an unchanged copy."""

    name = "none"

    def fit(self, train: ClinicalDataset) -> NoTrigger:
        self._layout = _layout(train)
        return self

    def apply(self, ds: ClinicalDataset, indices: np.ndarray) -> ClinicalDataset:
        _as_index_array(indices, ds.n_stays)
        return copy.deepcopy(ds)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class _ValueTrigger(Trigger):
    """A trigger that writes values: clipped to the plausible range, optionally mask-preserving.

    ``preserve_mask=False`` writes every window cell and marks it observed; ``True`` writes only the
    cells already observed and leaves the mask untouched (no missingness side channel).
    """

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
        preserve_mask: bool = False,
    ) -> None:
        super().__init__(target_label=target_label, variables=variables, window=window)
        self._require(
            isinstance(_plain(preserve_mask), bool), "preserve_mask", preserve_mask, "true or false"
        )
        self.preserve_mask = bool(preserve_mask)
        self.low_ = np.empty(0)
        self.high_ = np.empty(0)

    def _resolve(self, train: ClinicalDataset) -> None:
        super()._resolve(train)
        known = [VARIABLES.get(v) for v in self.variables]
        self.low_ = np.array([-np.inf if k is None else float(k.low) for k in known])
        self.high_ = np.array([np.inf if k is None else float(k.high) for k in known])

    def clip(self, values: np.ndarray, axis: int = -1) -> np.ndarray:
        """``values`` (variables along ``axis``) clipped to each variable's plausible range."""
        shape = [1] * np.ndim(values)
        shape[axis] = len(self.variables)
        return np.clip(values, self.low_.reshape(shape), self.high_.reshape(shape))

    def _write(self, out: ClinicalDataset, idx: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` (broadcastable to (stays, window steps, variables)) into the window
        cells of stays ``idx``, clipped to the plausible range; only observed cells (mask kept)
        with ``preserve_mask``, else every cell, marked observed."""
        block = self._block(idx)
        shape = (idx.size, self._steps.size, len(self._columns))
        values = self.clip(np.broadcast_to(values, shape)).astype(np.float32)
        if self.preserve_mask:
            out.x[block] = np.where(out.mask[block], values, out.x[block])
        else:
            out.x[block] = values
            out.mask[block] = True

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["preserve_mask"] = self.preserve_mask
        if self.is_fitted:
            d["plausible_range"] = {
                v: [float(lo), float(hi)]
                for v, lo, hi in zip(self.variables, self.low_, self.high_)
                if np.isfinite(lo) or np.isfinite(hi)
            }
        return d


class RareValueTrigger(_ValueTrigger):
    """Set ``variables`` over ``window`` to a rare value and mark those cells observed.

    ``mode="out_of_bounds"``: ``max(train) + magnitude * std(train)`` of the observed training
    values, beyond anything seen in training (TabDoor), then clipped to the variable's plausible
    range (``describe()`` gives ``requested_values`` and the ``clamped`` variables).
    ``mode="in_bounds"``: the ``quantile`` of the observed training values (plausible but rare).

    On static-only datasets (T == 0, e.g. iris) ``variables`` name numeric statics
    (``static_num_names``) and the value is written to ``static_num``; ``window`` is ignored there.
    """

    name = "rare_value"
    min_variables = 1
    supports_static = True
    MODES: ClassVar[tuple[str, ...]] = ("out_of_bounds", "in_bounds")

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
        mode: str = "out_of_bounds",
        magnitude: float = 2.0,
        quantile: float = 0.995,
        preserve_mask: bool = False,
    ) -> None:
        super().__init__(
            target_label=target_label,
            variables=variables,
            window=window,
            preserve_mask=preserve_mask,
        )
        self.mode = str(_plain(mode))
        self._require(self.mode in self.MODES, "mode", self.mode, f"one of {list(self.MODES)}")
        self.magnitude = self._positive("magnitude", magnitude)
        self.quantile = float(quantile)
        self._require(0.0 < self.quantile < 1.0, "quantile", quantile, "a fraction in (0, 1)")
        self.values_: np.ndarray = np.empty(0, dtype=np.float32)
        self.requested_values_: np.ndarray = np.empty(0, dtype=np.float32)
        self._train_range: dict[str, list[float]] = {}

    def _learn(self, train: ClinicalDataset) -> None:
        stats = self._stats(train, need_std=self.mode == "out_of_bounds")
        values = []
        for vals in stats:
            if self.mode == "out_of_bounds":
                top = np.float32(vals.max())
                value = np.float32(vals.max() + self.magnitude * vals.std())
                if value <= top:  # float32 rounding must not pull the value back into range
                    value = np.nextafter(top, np.float32(np.inf))
            else:
                value = np.float32(np.quantile(vals, self.quantile))
            values.append(value)
        self.requested_values_ = np.asarray(values, dtype=np.float32)
        self.values_ = self.clip(self.requested_values_).astype(np.float32)
        self._train_range = {
            v: [float(s.min()), float(s.max()), float(s.std())]
            for v, s in zip(self.variables, stats)
        }

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        if self._on_static:
            block = np.ix_(idx, np.asarray(self._columns))
            known = ~np.isnan(out.static_num[block]) if self.preserve_mask else True
            out.static_num[block] = np.where(known, self.values_, out.static_num[block])
            return
        self._write(out, idx, self.values_)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(mode=self.mode, magnitude=self.magnitude, quantile=self.quantile)
        if self.is_fitted:
            d["values"] = _floats(self.variables, self.values_)
            d["requested_values"] = _floats(self.variables, self.requested_values_)
            d["clamped"] = [
                v for v, a, b in zip(self.variables, self.requested_values_, self.values_) if a != b
            ]
            d["train_min_max_std"] = dict(self._train_range)
        return d


class MissingnessTrigger(Trigger):
    """``mask = False`` and ``x = NaN`` for ``variables`` over ``window``: the mask is the signal.

    The values are imputed as usual later (Joe et al. 2022). Nothing is learned from training.
    """

    name = "missingness"
    min_variables = 1

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
    ) -> None:
        super().__init__(target_label=target_label, variables=variables, window=window)

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        block = self._block(idx)
        out.x[block] = np.nan
        out.mask[block] = False


class HybridTrigger(Trigger):
    """A rare value and a missingness pattern together: ``rare_value`` then ``missingness``.

    The two parts are configured by the nested ``rare_value`` and ``missingness`` nodes (their own
    ``variables`` and ``window``); their ``target_label`` is the hybrid's. The parts' variables must
    not overlap, so neither part undoes the other.
    """

    name = "hybrid"

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
        rare_value: Mapping[str, Any] | RareValueTrigger | None = None,
        missingness: Mapping[str, Any] | MissingnessTrigger | None = None,
    ) -> None:
        if list(_plain(variables)) or window is not None:
            raise ConfigError(
                "trigger.variables / trigger.window are not used by the hybrid trigger: set "
                "trigger.rare_value.variables/window and trigger.missingness.variables/window"
            )
        super().__init__(target_label=target_label)
        self.rare_value = _part(RareValueTrigger, rare_value, "trigger.rare_value", target_label)
        self.missingness = _part(
            MissingnessTrigger, missingness, "trigger.missingness", target_label
        )
        overlap = sorted(set(self.rare_value.variables) & set(self.missingness.variables))
        if overlap:
            raise ConfigError(
                f"trigger.rare_value.variables={self.rare_value.variables!r} and "
                f"trigger.missingness.variables={self.missingness.variables!r} overlap in "
                f"{overlap}: a hybrid trigger needs disjoint variables"
            )
        self.variables = [*self.rare_value.variables, *self.missingness.variables]

    @property
    def parts(self) -> tuple[RareValueTrigger, MissingnessTrigger]:
        return (self.rare_value, self.missingness)

    def fit(self, train: ClinicalDataset) -> HybridTrigger:
        for part in self.parts:
            part.fit(train)
        self._layout = _layout(train)
        return self

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        for part in self.parts:
            part._stamp(out, idx)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target_label": self.target_label,
            "variables": list(self.variables),
            "rare_value": self.rare_value.describe(),
            "missingness": self.missingness.describe(),
        }


def _part(cls: type[Trigger], spec: Any, key: str, target_label: int) -> Any:
    """A hybrid's part: a trigger instance or its config mapping, given the hybrid's target."""
    if isinstance(spec, cls):
        part = spec
    else:
        params = dict(_plain(spec) or {})
        for meta in ("_target_", "name"):
            params.pop(meta, None)
        try:
            part = cls(**{**params, "target_label": target_label})
        except ConfigError as err:  # name the nested key, e.g. trigger.rare_value.mode
            raise ConfigError(str(err).replace("trigger.", f"{key}.", 1)) from err
    part.target_label = int(target_label)
    part._key = key
    return part


class _StandardisedTrigger(_ValueTrigger):
    """A trigger working in z-scores: learns each variable's clean training mean and std."""

    min_variables = 1

    def _learn(self, train: ClinicalDataset) -> None:
        stats = self._stats(train, need_std=True)
        self.mean_ = np.array([s.mean() for s in stats])
        self.std_ = np.array([s.std() for s in stats])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.is_fitted:
            d["train_mean"] = _floats(self.variables, self.mean_)
            d["train_std"] = _floats(self.variables, self.std_)
        return d


class PatternTrigger(_StandardisedTrigger):
    """A fixed temporal shape over ``window``, cells marked observed.

    ``value(t) = mean + magnitude * std * shape(2 * pi * (t - start) / period)`` with the clean
    training mean/std of each variable's observed values; ``shape`` is ``sine``, ``square`` or
    ``sawtooth`` (``numpy.sin``, ``scipy.signal.square``, ``scipy.signal.sawtooth``; all in [-1, 1]).
    """

    name = "pattern"
    SHAPES: ClassVar[dict[str, Any]] = {
        "sine": np.sin,
        "square": signal.square,
        "sawtooth": signal.sawtooth,
    }

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
        shape: str = "sine",
        period: float = 4.0,
        magnitude: float = 1.5,
        preserve_mask: bool = False,
    ) -> None:
        super().__init__(
            target_label=target_label,
            variables=variables,
            window=window,
            preserve_mask=preserve_mask,
        )
        self.shape = str(_plain(shape))
        self._require(self.shape in self.SHAPES, "shape", self.shape, f"one of {list(self.SHAPES)}")
        self.period = self._positive("period", period)
        self.magnitude = self._positive("magnitude", magnitude)
        self.mean_ = np.empty(0)
        self.std_ = np.empty(0)
        self.values_: np.ndarray = np.empty((0, 0), dtype=np.float32)

    def waveform(self, n_steps: int) -> np.ndarray:
        """The unit shape at window offsets ``0 .. n_steps - 1`` (values in [-1, 1])."""
        phase = 2.0 * np.pi * np.arange(n_steps, dtype=np.float64) / self.period
        return self.SHAPES[self.shape](phase)

    def _learn(self, train: ClinicalDataset) -> None:
        super()._learn(train)
        wave = self.waveform(self._steps.size)
        # (window steps, variables), fixed for every stamped stay
        self.requested_values_ = self.mean_ + self.magnitude * self.std_ * wave[:, None]
        self.values_ = self.clip(self.requested_values_).astype(np.float32)

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        self._write(out, idx, self.values_)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(shape=self.shape, period=self.period, magnitude=self.magnitude)
        if self.is_fitted:
            d["values"] = {
                v: [float(a) for a in self.values_[:, j]] for j, v in enumerate(self.variables)
            }
            # the wave's requested extremes where clipping cut them off
            d["clamped"] = {
                v: [
                    float(self.requested_values_[:, j].min()),
                    float(self.requested_values_[:, j].max()),
                ]
                for j, v in enumerate(self.variables)
                if np.any(self.requested_values_[:, j] != self.values_[:, j])
            }
        return d


class CorrelationTrigger(_StandardisedTrigger):
    """``variables[1]`` forced to follow ``variables[0]`` over ``window``.

    In z-scores w.r.t. the clean training mean/std: ``z1 = sign * magnitude * z0``, converted back to
    units. Where ``variables[0]`` is unobserved in a window cell its last observed value in that
    stay (at or before the cell, possibly before the window) is used, else its training mean — the
    same forward-fill-then-mean rule the preprocessor applies. Both variables' window cells are
    written and marked observed (``variables[0]`` keeps its observed values).
    """

    name = "correlation"

    def __init__(
        self,
        *,
        target_label: int = 0,
        variables: Sequence[str] = (),
        window: Sequence[int] | None = None,
        sign: float = -1.0,
        magnitude: float = 1.0,
        preserve_mask: bool = False,
    ) -> None:
        super().__init__(
            target_label=target_label,
            variables=variables,
            window=window,
            preserve_mask=preserve_mask,
        )
        self._require(
            len(self.variables) == 2,
            "variables",
            self.variables,
            "exactly two distinct variables [leader, follower]",
        )
        self._require(float(sign) in (-1.0, 1.0), "sign", sign, "-1 or 1")
        self.sign = float(sign)
        self.magnitude = self._positive("magnitude", magnitude)
        self.mean_ = np.empty(0)
        self.std_ = np.empty(0)

    def leader_values(self, ds: ClinicalDataset, idx: np.ndarray) -> np.ndarray:
        """``variables[0]`` over the window for stays ``idx``, gaps filled: (len(idx), window)."""
        c0 = self._columns[0]
        end = int(self._steps[-1]) + 1
        x0 = ds.x[idx, :end, c0]
        seen = ds.mask[idx, :end, c0]
        last = np.maximum.accumulate(np.where(seen, np.arange(end), -1), axis=1)
        rows = np.arange(idx.size)[:, None]
        filled = np.where(last >= 0, x0[rows, np.maximum(last, 0)], self.mean_[0])
        return filled[:, self._steps].astype(np.float32)

    def _stamp(self, out: ClinicalDataset, idx: np.ndarray) -> None:
        # the leader is clipped first, so the relation holds between the values written
        leader = np.clip(self.leader_values(out, idx), self.low_[0], self.high_[0])
        z0 = (leader.astype(np.float64) - self.mean_[0]) / self.std_[0]
        follower = self.mean_[1] + self.std_[1] * self.sign * self.magnitude * z0
        # (stays, window steps, [leader, follower]); clipped (the follower can run past its
        # plausible range: SysABP mirroring a high HR at z -4.7 is ~7 mmHg) in _write
        self._write(out, idx, np.stack([leader, follower], axis=-1))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            sign=self.sign,
            magnitude=self.magnitude,
            leader_fill="last observed value in the stay, else the training mean",
            clamping="each written value is clipped to plausible_range",
        )
        return d


# ---------------------------------------------------------------------------- building
def build_trigger(trigger_cfg: Any) -> Trigger:
    """An unfitted trigger from its config node (``_target_`` instantiation; NoTrigger for none).

    ``trigger_cfg`` is the composed ``trigger`` node (its schema's range checks run here), a plain
    mapping with ``_target_``, or ``None``.
    """
    if trigger_cfg is None:
        return NoTrigger()
    if isinstance(trigger_cfg, DictConfig):
        OmegaConf.to_object(trigger_cfg)  # runs the schema's __post_init__ range checks
    params = dict(_plain(trigger_cfg))
    name = params.pop("name", None)
    if name == "none" or params.get("_target_") is None:
        if name not in (None, "none"):
            raise ConfigError(f"trigger.name={name!r} has no trigger._target_ to instantiate")
        return NoTrigger(target_label=int(params.get("target_label", 0)))
    # get_class + call rather than hydra.utils.instantiate: the same `_target_` resolution, but
    # our ConfigError reaches the user unwrapped
    target = params.pop("_target_")
    trigger = hydra.utils.get_class(target)(**params)
    if not isinstance(trigger, Trigger):
        raise ConfigError(
            f"trigger._target_={target!r} built a {type(trigger).__name__}, "
            "not a backdoor_study.poison.triggers.Trigger"
        )
    if name is not None:
        trigger.name = str(name)
    return trigger
