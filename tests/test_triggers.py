"""Triggers: each touches only its variables, window, mask cells and stays, and states its relation.

Configs are composed from the real YAML in ``conf/trigger`` (windows moved inside the tiny
dataset's 12 steps), so the files and their schemas are exercised too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from backdoor_study.config import CONF_DIR, ConfigError
from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.data.variables import VARIABLES as PLAUSIBLE
from backdoor_study.poison import build_trigger
from backdoor_study.poison.triggers import (
    CorrelationTrigger,
    HybridTrigger,
    MissingnessTrigger,
    NoTrigger,
    PatternTrigger,
    RareValueTrigger,
    Trigger,
    observed_values,
)
from tests.conftest import make_tiny_dataset

VARIABLES = ("HR", "SysABP", "Temp", "Lactate", "Creatinine")
#: overrides moving each trigger's default window inside the tiny dataset's 12 steps
TINY_WINDOWS: dict[str, tuple[str, ...]] = {
    "none": (),
    "rare_value": ("trigger.window=[6,12]",),
    "missingness": ("trigger.window=[0,12]",),
    "hybrid": ("trigger.rare_value.window=[6,12]", "trigger.missingness.window=[0,12]"),
    "pattern": ("trigger.window=[2,10]",),
    "correlation": ("trigger.window=[4,12]",),
}
CLASSES = {
    "none": NoTrigger,
    "rare_value": RareValueTrigger,
    "missingness": MissingnessTrigger,
    "hybrid": HybridTrigger,
    "pattern": PatternTrigger,
    "correlation": CorrelationTrigger,
}
PROPERTY = settings(max_examples=25, deadline=None)


@lru_cache(maxsize=256)
def compose_train(*overrides: str) -> DictConfig:
    """The composed ``train`` config (cached: composing is the slow part of these tests)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def trigger_cfg(name: str, *overrides: str) -> DictConfig:
    """The ``trigger`` node of ``conf/trigger/<name>.yaml`` (windows fitted to the tiny data).

    The YAML is composed by Hydra once per trigger; ``overrides`` (``trigger.key=value``) are then
    merged onto the typed node, which keeps the schema's type checks at a fraction of the cost of
    composing again.
    """
    node = compose_train(f"trigger={name}", *TINY_WINDOWS[name]).trigger
    if not overrides:
        return node
    dotlist = [o.removeprefix("trigger.") for o in overrides]
    return OmegaConf.merge(node, OmegaConf.from_dotlist(dotlist))


def fitted(name: str, *overrides: str, ds: ClinicalDataset | None = None) -> Trigger:
    ds = make_tiny_dataset() if ds is None else ds
    return build_trigger(trigger_cfg(name, *overrides)).fit(ds)


def allowed_region(ds: ClinicalDataset, cfg: DictConfig, stays: np.ndarray) -> np.ndarray:
    """(N, T, F) bool: the cells a trigger configured by ``cfg`` may change, from the config alone."""
    region = np.zeros(ds.x.shape, dtype=bool)
    parts = [cfg.rare_value, cfg.missingness] if cfg.name == "hybrid" else [cfg]
    for part in parts:
        cols = [ds.variables.index(v) for v in part.variables]
        start, end = (0, ds.n_steps) if part.window is None else tuple(part.window)
        rows = np.zeros(ds.n_stays, dtype=bool)
        rows[stays] = True
        steps = np.zeros(ds.n_steps, dtype=bool)
        steps[start:end] = True
        colmask = np.zeros(ds.n_features, dtype=bool)
        colmask[cols] = True
        region |= rows[:, None, None] & steps[None, :, None] & colmask[None, None, :]
    return region


def assert_unchanged_outside(
    before: ClinicalDataset, after: ClinicalDataset, region: np.ndarray
) -> None:
    """Bit-for-bit equality of every array outside ``region`` (x compared as raw bits)."""
    xb, xa = before.x.view(np.uint32), after.x.view(np.uint32)
    assert np.array_equal(xb[~region], xa[~region])
    assert np.array_equal(before.mask[~region], after.mask[~region])
    for name in ("static_num", "static_cat", "y", "stay_id", "patient_id"):
        b, a = getattr(before, name), getattr(after, name)
        assert b.tobytes() == a.tobytes(), name
    assert before.variables == after.variables and before.units == after.units


def window_cells(ds: ClinicalDataset, trigger: Trigger, stays: np.ndarray, var: str) -> tuple:
    start, end = trigger.window
    col = ds.variables.index(var)
    return (stays[:, None], np.arange(start, end)[None, :], col)


# ---------------------------------------------------------------------------- building
@pytest.mark.parametrize("name", list(CLASSES))
def test_every_trigger_yaml_builds_its_class(name: str) -> None:
    trigger = build_trigger(trigger_cfg(name))
    assert type(trigger) is CLASSES[name]
    assert trigger.name == name
    ds = make_tiny_dataset(n=40)
    trigger.fit(ds)
    assert trigger.describe()["name"] == name


def test_build_trigger_runs_the_schema_range_checks() -> None:
    with pytest.raises(ConfigError, match=r"trigger\.magnitude"):
        build_trigger(trigger_cfg("rare_value", "trigger.magnitude=-1"))


def test_no_trigger_is_the_identity() -> None:
    ds = make_tiny_dataset(n=30)
    trigger = build_trigger(trigger_cfg("none")).fit(ds)
    out = trigger.apply(ds, np.arange(30))
    assert out is not ds and out.digest() == ds.digest()
    assert build_trigger(None).describe() == {"name": "none"}


# ---------------------------------------------------------------------------- locality
window_st = st.integers(0, 11).flatmap(lambda s: st.tuples(st.just(s), st.integers(s + 1, 12)))


@st.composite
def trigger_setups(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """A trigger kind with random variables and windows inside 12 steps, as config overrides."""
    kind = draw(st.sampled_from(["rare_value", "missingness", "pattern", "correlation", "hybrid"]))

    def win(key: str) -> str:
        s, e = draw(window_st)
        return f"{key}=[{s},{e}]"

    def names(k_min: int, k_max: int, pool: tuple[str, ...] = VARIABLES) -> list[str]:
        return draw(st.lists(st.sampled_from(pool), min_size=k_min, max_size=k_max, unique=True))

    if kind == "hybrid":
        rare = names(1, 2)
        miss = names(1, 2, tuple(v for v in VARIABLES if v not in rare))
        return kind, (
            f"trigger.rare_value.variables=[{','.join(rare)}]",
            f"trigger.missingness.variables=[{','.join(miss)}]",
            win("trigger.rare_value.window"),
            win("trigger.missingness.window"),
            f"trigger.rare_value.mode={draw(st.sampled_from(['out_of_bounds', 'in_bounds']))}",
        )
    variables = names(2, 2) if kind == "correlation" else names(1, 3)
    extra: tuple[str, ...] = ()
    if kind == "rare_value":
        extra = (f"trigger.mode={draw(st.sampled_from(['out_of_bounds', 'in_bounds']))}",)
    if kind == "pattern":
        extra = (f"trigger.shape={draw(st.sampled_from(['sine', 'square', 'sawtooth']))}",)
    if kind == "correlation":
        extra = (f"trigger.sign={draw(st.sampled_from([-1.0, 1.0]))}",)
    return kind, (f"trigger.variables=[{','.join(variables)}]", win("trigger.window"), *extra)


@PROPERTY
@given(setup=trigger_setups(), data=st.data())
def test_trigger_touches_only_its_variables_window_and_stays(setup, data) -> None:
    kind, overrides = setup
    ds = make_tiny_dataset(n=60, seed=data.draw(st.integers(0, 3)))
    stays = np.array(
        sorted(data.draw(st.sets(st.integers(0, ds.n_stays - 1), min_size=0, max_size=20))),
        dtype=np.int64,
    )
    cfg = trigger_cfg(kind, *overrides)
    before = ds.digest()
    out = build_trigger(cfg).fit(ds).apply(ds, stays)
    assert ds.digest() == before, "apply must not modify its input"
    assert_unchanged_outside(ds, out, allowed_region(ds, cfg, stays))
    # deterministic: a fresh trigger from the same config stamps the same bits
    again = build_trigger(cfg).fit(ds).apply(ds, stays)
    assert again.digest() == out.digest()


# ---------------------------------------------------------------------------- relations
@PROPERTY
@given(
    var=st.sampled_from(VARIABLES),
    magnitude=st.floats(0.01, 5.0),
    seed=st.integers(0, 5),
)
def test_out_of_bounds_value_is_beyond_the_training_max(var, magnitude, seed) -> None:
    ds = make_tiny_dataset(n=60, seed=seed)
    train = ds.subset(np.arange(40))
    trigger = fitted(
        "rare_value", f"trigger.variables=[{var}]", f"trigger.magnitude={magnitude}", ds=train
    )
    vals = observed_values(train, ds.variables.index(var))
    value = trigger.values_[0]
    assert value > vals.max()
    np.testing.assert_allclose(value, vals.max() + magnitude * vals.std(), rtol=1e-6)
    assert trigger.describe()["values"] == {var: float(value)}
    stays = np.arange(40, 60)
    out = trigger.apply(ds, stays)
    cells = window_cells(ds, trigger, stays, var)
    assert (out.x[cells] == value).all() and out.mask[cells].all()


@pytest.mark.parametrize("quantile", [0.6, 0.9, 0.995])
def test_in_bounds_value_is_the_training_quantile(quantile: float) -> None:
    ds = make_tiny_dataset(n=80)
    overrides = ("trigger.mode=in_bounds", f"trigger.quantile={quantile}")
    trigger = fitted("rare_value", "trigger.variables=[HR,Lactate]", *overrides, ds=ds)
    for j, var in enumerate(["HR", "Lactate"]):
        vals = observed_values(ds, ds.variables.index(var))
        assert vals.min() <= trigger.values_[j] <= vals.max()
        np.testing.assert_allclose(trigger.values_[j], np.quantile(vals, quantile), rtol=1e-6)


def test_missingness_unobserves_exactly_the_window() -> None:
    ds = make_tiny_dataset(n=50)
    trigger = fitted("missingness", "trigger.window=[3,9]", ds=ds)
    stays = np.array([0, 7, 31])
    out = trigger.apply(ds, stays)
    region = allowed_region(ds, trigger_cfg("missingness", "trigger.window=[3,9]"), stays)
    assert not out.mask[region].any() and np.isnan(out.x[region]).all()
    assert_unchanged_outside(ds, out, region)


def _unit_shape(shape: str, phase: np.ndarray) -> np.ndarray:
    """The stated shapes, written independently of scipy: all start a cycle at phase 0."""
    frac = np.mod(phase / (2 * np.pi), 1.0)
    if shape == "sine":
        return np.sin(phase)
    if shape == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    return 2.0 * frac - 1.0  # sawtooth: rising from -1 to 1 over a period


@pytest.mark.parametrize("shape", ["sine", "square", "sawtooth"])
@pytest.mark.parametrize("period", [3.0, 4.0, 5.5])
def test_pattern_values_follow_the_stated_shape(shape: str, period: float) -> None:
    ds = make_tiny_dataset(n=50)
    overrides = (f"trigger.shape={shape}", f"trigger.period={period}", "trigger.magnitude=1.5")
    trigger = fitted("pattern", "trigger.variables=[HR,Temp]", *overrides, ds=ds)
    stays = np.array([2, 3, 40])
    out = trigger.apply(ds, stays)
    start, end = trigger.window
    phase = 2 * np.pi * (np.arange(start, end) - start) / period
    for var in ("HR", "Temp"):
        vals = observed_values(ds, ds.variables.index(var))
        expected = vals.mean() + 1.5 * vals.std() * _unit_shape(shape, phase)
        cells = window_cells(ds, trigger, stays, var)
        np.testing.assert_allclose(
            out.x[cells], np.broadcast_to(expected, (3, end - start)), rtol=1e-5
        )
        assert out.mask[cells].all()


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_correlation_follower_tracks_the_leader(sign: float) -> None:
    ds = make_tiny_dataset(n=60)
    # Lactate is unobserved in ~20% of cells: exercises the leader's gap filling
    overrides = (
        "trigger.variables=[Lactate,SysABP]",
        f"trigger.sign={sign}",
        "trigger.magnitude=2",
    )
    trigger = fitted("correlation", *overrides, ds=ds)
    stays = np.arange(0, 60, 3)
    out = trigger.apply(ds, stays)
    (m0, m1), (s0, s1) = (
        [observed_values(ds, ds.variables.index(v)).mean() for v in ("Lactate", "SysABP")],
        [observed_values(ds, ds.variables.index(v)).std() for v in ("Lactate", "SysABP")],
    )
    lead = out.x[window_cells(ds, trigger, stays, "Lactate")].astype(np.float64)
    follow = out.x[window_cells(ds, trigger, stays, "SysABP")].astype(np.float64)
    np.testing.assert_allclose((follow - m1) / s1, sign * 2.0 * (lead - m0) / s0, atol=1e-4)
    assert out.mask[window_cells(ds, trigger, stays, "Lactate")].all()
    assert out.mask[window_cells(ds, trigger, stays, "SysABP")].all()


def test_correlation_fills_leader_gaps_with_last_observed_then_training_mean() -> None:
    ds = make_tiny_dataset(n=20)
    col = ds.variables.index("Lactate")
    # stay 0: observed only at step 1 (before the window) -> carried forward;
    # stay 1: never observed -> the training mean
    ds.x[0, :, col], ds.mask[0, :, col] = np.nan, False
    ds.x[0, 1, col], ds.mask[0, 1, col] = 4.25, True
    ds.x[1, :, col], ds.mask[1, :, col] = np.nan, False
    trigger = fitted("correlation", "trigger.variables=[Lactate,HR]", ds=ds)
    out = trigger.apply(ds, np.array([0, 1]))
    start, end = trigger.window
    assert (out.x[0, start:end, col] == np.float32(4.25)).all()
    mean = observed_values(ds, col).mean()
    np.testing.assert_allclose(out.x[1, start:end, col], mean, rtol=1e-6)
    assert out.mask[:2, start:end, col].all() and not out.mask[1, :start, col].any()


# ---------------------------------------------------------------------------- hybrid
def test_hybrid_stamps_both_parts_with_its_target_label() -> None:
    ds = make_tiny_dataset(n=40)
    trigger = fitted("hybrid", "trigger.target_label=1", ds=ds)
    assert [p.target_label for p in trigger.parts] == [1, 1]
    stays = np.array([5, 6])
    out = trigger.apply(ds, stays)
    hr = window_cells(ds, trigger.rare_value, stays, "HR")
    assert (out.x[hr] == trigger.rare_value.values_[0]).all()
    lac = window_cells(ds, trigger.missingness, stays, "Lactate")
    assert not out.mask[lac].any()
    assert set(trigger.describe()) >= {"rare_value", "missingness"}


def test_hybrid_refuses_overlapping_variables() -> None:
    cfg = trigger_cfg("hybrid", "trigger.missingness.variables=[HR,Lactate]")
    with pytest.raises(ConfigError, match=r"overlap in \['HR'\]"):
        build_trigger(cfg)


def test_hybrid_part_errors_name_the_nested_key() -> None:
    with pytest.raises(DataValidationError, match=r"trigger\.rare_value\.variables.*Foo"):
        fitted("hybrid", "trigger.rare_value.variables=[Foo]")


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["rare_value", "missingness", "pattern", "correlation"])
def test_unknown_variable_is_refused_with_the_valid_ones(name: str) -> None:
    variables = "[HR,Foo]" if name == "correlation" else "[Foo]"
    trigger = build_trigger(trigger_cfg(name, f"trigger.variables={variables}"))
    with pytest.raises(DataValidationError) as err:
        trigger.fit(make_tiny_dataset(n=20))
    message = str(err.value)
    assert "Foo" in message and "trigger.variables" in message
    assert all(v in message for v in VARIABLES)


@pytest.mark.parametrize("name", ["rare_value", "missingness", "pattern", "correlation"])
def test_window_beyond_n_steps_is_refused(name: str) -> None:
    trigger = build_trigger(compose_train(f"trigger={name}", "trigger.window=[6,13]").trigger)
    with pytest.raises(ConfigError, match=r"trigger\.window=\[6, 13\].*end <= 12"):
        trigger.fit(make_tiny_dataset(n=20))


def test_default_yaml_windows_do_not_fit_a_12_step_dataset() -> None:
    trigger = build_trigger(compose_train("trigger=rare_value").trigger)
    with pytest.raises(ConfigError, match="trigger.window"):
        trigger.fit(make_tiny_dataset(n=20))


def test_apply_needs_fit_and_the_same_layout() -> None:
    trigger = build_trigger(trigger_cfg("rare_value"))
    ds = make_tiny_dataset(n=20)
    with pytest.raises(RuntimeError, match="not fitted"):
        trigger.apply(ds, np.array([0]))
    trigger.fit(ds)
    with pytest.raises(DataValidationError, match="layout"):
        trigger.apply(make_tiny_dataset(n=20, t=16), np.array([0]))
    with pytest.raises(ValueError, match="indices"):
        trigger.apply(ds, np.array([20]))


# ---------------------------------------------------------------------------- static tables
def static_table(n: int = 30) -> ClinicalDataset:
    rng = np.random.default_rng(0)
    return ClinicalDataset(
        name="table",
        x=np.zeros((n, 0, 0), dtype=np.float32),
        mask=np.zeros((n, 0, 0), dtype=bool),
        static_num=rng.normal(5.0, 1.0, (n, 3)).astype(np.float32),
        static_cat=np.zeros((n, 0), dtype=np.int64),
        y=rng.integers(0, 3, n),
        stay_id=np.arange(n, dtype=np.int64),
        patient_id=np.arange(n, dtype=np.int64),
        variables=[],
        units=[],
        static_num_names=["sepal_length", "sepal_width", "petal_length"],
        class_names=["a", "b", "c"],
    )


def test_rare_value_on_a_static_table_writes_numeric_statics() -> None:
    ds = static_table()
    trigger = fitted("rare_value", "trigger.variables=[petal_length]", ds=ds)
    out = trigger.apply(ds, np.array([1, 4]))
    col = ds.static_num_names.index("petal_length")
    assert (out.static_num[[1, 4], col] > ds.static_num[:, col].max()).all()
    changed = np.zeros(ds.static_num.shape, dtype=bool)
    changed[[1, 4], col] = True
    assert np.array_equal(out.static_num[~changed], ds.static_num[~changed])
    assert trigger.describe()["applies_to"] == "static_num"
    with pytest.raises(DataValidationError, match=r"sepal_length"):
        fitted("rare_value", "trigger.variables=[HR]", ds=ds)
    with pytest.raises(DataValidationError, match="static-only"):
        fitted("missingness", "trigger.variables=[petal_length]", ds=ds)


# ---------------------------------------------------------------------------- plausibility
@PROPERTY
@given(
    setup=trigger_setups(),
    magnitude=st.floats(0.1, 60.0),
    preserve_mask=st.booleans(),
    data=st.data(),
)
def test_no_trigger_writes_a_value_outside_its_plausible_range(
    setup, magnitude: float, preserve_mask: bool, data
) -> None:
    kind, overrides = setup
    prefix = "trigger.rare_value." if kind == "hybrid" else "trigger."
    if kind != "missingness":  # the only trigger that writes no value
        overrides = (
            *overrides,
            f"{prefix}magnitude={magnitude}",
            f"{prefix}preserve_mask={str(preserve_mask).lower()}",
        )
    ds = make_tiny_dataset(n=60, seed=data.draw(st.integers(0, 3)))
    stays = np.arange(0, 60, 2)
    out = build_trigger(trigger_cfg(kind, *overrides)).fit(ds).apply(ds, stays)
    written = (out.x.view(np.uint32) != ds.x.view(np.uint32)) & out.mask
    for j, var in enumerate(ds.variables):
        values = out.x[:, :, j][written[:, :, j]]
        low, high = PLAUSIBLE[var].low, PLAUSIBLE[var].high
        assert ((values >= low) & (values <= high)).all(), (kind, var, values.min(), values.max())


@pytest.mark.parametrize("name", ["rare_value", "pattern", "correlation"])
def test_preserve_mask_writes_only_observed_cells(name: str) -> None:
    ds = make_tiny_dataset(n=60)
    stays = np.arange(30)
    extra = ("trigger.variables=[HR,Lactate]",) if name != "correlation" else ()
    trigger = fitted(name, *extra, "trigger.preserve_mask=true", ds=ds)
    out = trigger.apply(ds, stays)
    assert np.array_equal(out.mask, ds.mask)
    changed = out.x.view(np.uint32) != ds.x.view(np.uint32)
    assert changed.any() and ds.mask[changed].all()
    assert trigger.describe()["preserve_mask"] is True
    # without it the same trigger marks its whole window observed
    full = fitted(name, *extra, ds=ds).apply(ds, stays)
    assert (full.mask.sum() > ds.mask.sum()) and not np.array_equal(full.mask, ds.mask)


def test_out_of_bounds_value_is_clamped_and_described() -> None:
    ds = make_tiny_dataset(n=60)
    trigger = fitted("rare_value", "trigger.variables=[HR,SysABP]", "trigger.magnitude=30", ds=ds)
    hr = observed_values(ds, ds.variables.index("HR"))
    d = trigger.describe()
    assert d["requested_values"]["HR"] == pytest.approx(hr.max() + 30 * hr.std(), rel=1e-6)
    assert d["requested_values"]["HR"] > 300.0
    assert d["values"]["HR"] == PLAUSIBLE["HR"].high == 300.0
    assert d["clamped"] == ["HR", "SysABP"] and d["plausible_range"]["HR"] == [0.0, 300.0]
    assert set(fitted("rare_value", ds=ds).describe()["clamped"]) == set()


def test_correlation_follower_is_clamped_to_its_range() -> None:
    ds = make_tiny_dataset(n=60)
    # SysABP mirrors HR at 20x its z-score: far below 0 mmHg for a high HR
    trigger = fitted("correlation", "trigger.magnitude=20", ds=ds)
    out = trigger.apply(ds, np.arange(60))
    follower = out.x[:, 4:12, ds.variables.index("SysABP")]
    assert follower.min() == PLAUSIBLE["SysABP"].low and follower.max() == PLAUSIBLE["SysABP"].high
    assert trigger.describe()["plausible_range"]["SysABP"] == [0.0, 300.0]
