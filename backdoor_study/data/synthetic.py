"""``data=synthetic``: a MIMIC-IV-like ICU cohort, generated deterministically from its seed.

This module owns the synthetic generator (:func:`generate_cohort`), the deterministic dev subset
(:func:`dev_indices`, :func:`sample_dev`) and the on-disk seed layout under ``data.data_dir``
(:func:`prepare_seed_layout`, :func:`rebuild_dev_subset`)::

    main.parquet        every stay (canonical layout, backdoor_study.data.schema)
    dev/dev.parquet     the dev subset: dev_size stays, whole patients, stratified on the label
    splits/splits.json  the default split of the dev subset (data.split)
    manifest.json       generator parameters, files and sha256 digests; written last

It must not know about models, poisoning or training: it produces a :class:`ClinicalDataset`
and nothing else. What the generator models (variables, units, sampling rates, the hidden
risk process) is described in docs/data_synthetic.md.

Everything is vectorised over stays; the only Python loops run over the time axis (``n_steps``)
or over the fixed list of variables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
from scipy.signal import lfilter

from backdoor_study.data import LoadedData, register_source
from backdoor_study.data.schema import (
    ClinicalDataset,
    DataValidationError,
    read_parquet,
    write_parquet,
)
from backdoor_study.data.splits import make_splits
from backdoor_study.data.variables import lookup
from backdoor_study.utils import exclusive_lock, read_json, write_json

# Bump when a change to the generator changes its output for the same parameters: a layout on
# disk written by another version is then refused instead of being read as if it were current.
GENERATOR_VERSION = 2

VITALS = ("HR", "SysABP", "DiasABP", "MAP", "RespRate", "Temp", "SaO2", "GCS", "Urine")
LABS = (
    "Lactate",
    "Creatinine",
    "BUN",
    "Glucose",
    "K",
    "Na",
    "HCO3",
    "WBC",
    "Platelets",
    "HCT",
    "pH",
)
VARIABLES = VITALS + LABS
STATIC_NUM_NAMES = ["Age", "Weight", "Height"]
STATIC_CAT_NAMES = ["Gender", "AdmissionType", "ICUUnit"]
GENDERS = ["F", "M"]
ADMISSION_TYPES = ["EMERGENCY", "URGENT", "ELECTIVE"]
ICU_UNITS = ["MICU", "SICU", "CCU", "CSRU", "TSICU"]

MAIN_FILE = "main.parquet"
DEV_FILE = "dev/dev.parquet"
SPLITS_FILE = "splits/splits.json"
MANIFEST_FILE = "manifest.json"
PARAM_KEYS = ("n_stays", "n_steps", "prevalence", "seed", "dev_size", "generator_version")


# ---------------------------------------------------------------------------- physiology tables
class _Physiology(NamedTuple):
    """How one variable's true value follows the hidden state (see docs/data_synthetic.md).

    ``transform`` "lin": value = centre + z; "log": value = centre * exp(z); "deficit": value =
    centre - 2.5 * exp(z) (SaO2: a log-normal shortfall below 100 %), where z is the sum of the
    set point, loading * driver over the drivers, the drift and the measurement noise.
    Loadings are per unit of each driver: ``severity`` and ``kidney`` (lagged severity) are
    latent z-like scores, ``shock`` / ``tachy`` / ``sedation`` are 0/1 episode indicators.
    """

    transform: str
    centre: float
    between_sd: float  # stay-to-stay spread of the individual set point
    severity: float
    kidney: float
    shock: float
    tachy: float  # agitation episodes
    sedation: float
    circadian: float  # amplitude of the daily rhythm
    drift_sd: float  # within-stay physiological wandering (AR(1), phi 0.85, stationary sd)
    noise_sd: float  # measurement noise, independent per observation
    decimals: int  # charting resolution


_PHYSIOLOGY: dict[str, _Physiology] = {
    # fields: transform, centre, between_sd, severity, kidney, shock, tachy, sedation,
    #         circadian, drift_sd, noise_sd, decimals. MAP is derived from SysABP and DiasABP.
    # vitals -------------------------------------------------------------
    "HR": _Physiology("lin", 84.0, 11.0, 5.0, 0.0, 22.0, 20.0, -14.0, 3.0, 2.0, 9.0, 0),
    "SysABP": _Physiology("lin", 121.0, 14.0, -5.0, 0.0, -24.0, 18.0, -22.0, 4.0, 3.0, 11.0, 0),
    "DiasABP": _Physiology("lin", 61.0, 8.0, -2.5, 0.0, -12.0, 9.0, -11.0, 2.0, 1.5, 6.0, 0),
    "RespRate": _Physiology("lin", 19.0, 3.0, 1.8, 0.0, 4.0, 4.0, -3.0, 0.8, 1.0, 3.5, 0),
    "Temp": _Physiology("lin", 36.9, 0.35, 0.2, 0.0, 0.0, 0.0, -0.1, 0.2, 0.1, 0.3, 1),
    "SaO2": _Physiology("deficit", 100.0, 0.35, 0.25, 0.0, 0.3, 0.3, 0.0, 0.0, 0.1, 0.45, 0),
    "GCS": _Physiology("lin", 14.3, 0.8, -1.0, 0.0, -0.5, 0.0, -5.0, 0.0, 0.3, 1.1, 0),
    "Urine": _Physiology("log", 80.0, 0.35, -0.25, -0.2, -0.5, 0.0, -0.5, 0.0, 0.1, 0.6, 0),
    # labs ---------------------------------------------------------------
    "Lactate": _Physiology("log", 1.3, 0.3, 0.25, 0.0, 0.5, 0.05, 0.0, 0.0, 0.15, 0.08, 1),
    "Creatinine": _Physiology("log", 0.95, 0.3, 0.03, 0.18, 0.0, 0.0, 0.0, 0.0, 0.08, 0.04, 1),
    "BUN": _Physiology("log", 19.0, 0.4, 0.05, 0.25, 0.0, 0.0, 0.0, 0.0, 0.08, 0.05, 0),
    "Glucose": _Physiology("log", 128.0, 0.18, 0.05, 0.0, 0.1, 0.0, 0.0, 0.0, 0.15, 0.08, 0),
    "K": _Physiology("lin", 4.1, 0.35, 0.0, 0.15, 0.1, 0.0, 0.0, 0.0, 0.2, 0.1, 1),
    "Na": _Physiology("lin", 139.0, 3.2, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 1.2, 0.8, 0),
    "HCO3": _Physiology("lin", 24.0, 2.3, -0.8, -0.4, -1.0, 0.0, 0.0, 0.0, 1.0, 0.7, 0),
    "WBC": _Physiology("log", 10.5, 0.35, 0.08, 0.0, 0.05, 0.0, 0.0, 0.0, 0.1, 0.04, 1),
    "Platelets": _Physiology("log", 205.0, 0.38, -0.03, -0.06, 0.0, 0.0, 0.0, 0.0, 0.08, 0.04, 0),
    "HCT": _Physiology("lin", 31.0, 4.0, -0.3, 0.0, -0.5, 0.0, 0.0, 0.0, 0.8, 0.6, 1),
    "pH": _Physiology("lin", 7.39, 0.03, -0.012, -0.006, -0.02, 0.0, 0.0, 0.0, 0.015, 0.01, 2),
}

# Chronic conditions shift a variable's set point for the whole stay (additive on the
# transformed scale): stable abnormal values that a summary confuses with acute illness.
_CHRONIC: dict[str, dict[str, float]] = {
    "ckd": {"Creatinine": 0.9, "BUN": 0.6, "K": 0.3, "HCT": -4.0, "HCO3": -1.5, "Urine": -0.3},
    "diabetes": {"Glucose": 0.35},
    "copd": {"HCO3": 4.0, "RespRate": 3.0, "SaO2": 0.5, "pH": -0.02},
}

# Where the generator's tails would leave the living range, chart the limit instead (tighter
# than the cleaning bounds in variables.py, which every value also respects).
_CHART_LIMITS: dict[str, tuple[float, float]] = {
    "HR": (30.0, 220.0),
    "SysABP": (40.0, 250.0),
    "DiasABP": (20.0, 150.0),
    "RespRate": (4.0, 60.0),
    "Temp": (32.0, 42.0),
    "SaO2": (60.0, 100.0),
}

# Variables measured together share their random draws, so their observation masks nest: a
# chemistry panel is resulted together, the arterial line gives SysABP, DiasABP and MAP in one
# reading (those two reuse SysABP's mask), nursing charts vitals in the same rounds. How often each
# variable is observed comes from the calibration file, not from here.
_MEASURED_TOGETHER: dict[str, tuple[str, ...]] = {
    "monitor": ("HR", "Urine", "Temp", "GCS", "RespRate"),
    "arterial_line": ("SysABP",),
    "blood_gas": ("pH", "Lactate", "SaO2"),
    "chemistry": ("Na", "K", "HCO3", "BUN", "Creatinine", "Glucose"),
    "blood_count": ("WBC", "Platelets", "HCT"),
}
_SAME_READING = {"DiasABP": "SysABP", "MAP": "SysABP"}
# How much an hour's own severity (beyond the stay's average) adds to the chance of a
# measurement, relative to the stay's average: labs cluster in the hours the patient is worse.
_HOURLY_WORKUP = 0.5
# The quantiles that map the generated marginals onto set A's are taken from at most this many
# stays (the stays are in random order): enough for the 0.05 % tails, and fast at 100,000 stays.
_QUANTILE_STAYS = 20_000

CALIBRATION_FILE = Path(__file__).with_name("synthetic_calibration.json")
_CALIBRATION_KEYS = ("observation_rate", "never_observed", "death_survivor_ratio", "quantiles")


@functools.lru_cache(maxsize=1)
def calibration() -> dict[str, Any]:
    """The per-variable targets derived from PhysioNet 2012 set A by scripts/calibrate_synthetic.py.

    The only thing the generator knows about the real data; it never reads the data itself.
    """
    cal = read_json(CALIBRATION_FILE)
    levels = cal.get("quantile_levels", [])
    for name in VARIABLES:
        entry = cal.get("variables", {}).get(name)
        lacking = [k for k in _CALIBRATION_KEYS if entry is None or k not in entry]
        if lacking or len(entry["quantiles"]) != len(levels):
            raise DataValidationError(
                f"{CALIBRATION_FILE}: variable {name!r} lacks {lacking or 'one quantile per level'}; "
                f"regenerate it with scripts/calibrate_synthetic.py"
            )
    return cal


# ---------------------------------------------------------------------------- generator
@dataclass
class _Stays:
    """Per-stay hidden and recorded attributes, shapes (N,)."""

    patient: np.ndarray  # dense patient index
    age: np.ndarray  # patient's age at first stay, years (float)
    male: np.ndarray
    height: np.ndarray
    weight: np.ndarray
    unit: np.ndarray  # index into ICU_UNITS
    admission: np.ndarray  # index into ADMISSION_TYPES
    frailty: np.ndarray
    chronic: dict[str, np.ndarray]
    admit_hour: np.ndarray


@dataclass
class _Latent:
    """The hidden risk process, shapes (N, T)."""

    severity: np.ndarray
    kidney: np.ndarray
    shock: np.ndarray  # episode indicators as float32 0/1
    tachy: np.ndarray
    sedation: np.ndarray
    daytime: np.ndarray  # circadian rhythm, sin of the hour of day (peaks mid-afternoon)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _ar1(rng: np.random.Generator, n: int, t: int, phi: float, sd: float) -> np.ndarray:
    """(n, t) stationary AR(1) paths with marginal standard deviation ``sd`` (float32).

    Built time-major, so each step is one contiguous vector update; returned as a (n, t) view.
    """
    path = rng.standard_normal((t, n), dtype=np.float32)
    path[0] *= np.float32(sd)
    path[1:] *= np.float32(sd * np.sqrt(1.0 - phi * phi))
    phi32 = np.float32(phi)
    for k in range(1, t):
        path[k] += phi32 * path[k - 1]
    return path.T


def _markov_episodes(
    rng: np.random.Generator, enter: np.ndarray, leave: np.ndarray | float
) -> np.ndarray:
    """(N, T) bool episodes of a two-state chain with per-hour entry/exit probabilities."""
    n, t = enter.shape
    u = rng.random((n, t), dtype=np.float32)
    state = np.zeros((n, t), dtype=bool)
    leave_arr = np.broadcast_to(np.asarray(leave, dtype=np.float32), (n, t))
    on = np.zeros(n, dtype=bool)
    for k in range(t):  # the chain is sequential in time; vectorised over stays
        on = np.where(on, u[:, k] >= leave_arr[:, k], u[:, k] < enter[:, k])
        state[:, k] = on
    return state


def _draw_stays(rng: np.random.Generator, n: int) -> _Stays:
    # Stays per patient: about 1.4 on average, as in MIMIC-IV ICU stays per subject.
    n_pat = n  # enough patients that their stays cover n
    per_patient = rng.choice([1, 2, 3, 4], size=n_pat, p=[0.76, 0.15, 0.06, 0.03])
    patient_of_stay = np.repeat(np.arange(n_pat), per_patient)[:n]
    n_pat = int(patient_of_stay[-1]) + 1

    male_p = rng.random(n_pat) < 0.56
    age_p = np.clip(rng.normal(64.0, 16.5, n_pat), 18.0, 91.0)
    height_p = np.where(male_p, rng.normal(176.0, 7.5, n_pat), rng.normal(162.0, 7.0, n_pat))
    bmi_p = np.clip(rng.lognormal(np.log(27.5), 0.2, n_pat), 15.0, 60.0)
    frailty_p = rng.standard_normal(n_pat) + 0.025 * (age_p - 64.0)
    chronic_p = {
        "ckd": rng.random(n_pat) < _sigmoid(-2.0 + 0.5 * frailty_p),
        "diabetes": rng.random(n_pat) < 0.28,
        "copd": rng.random(n_pat) < _sigmoid(-2.4 + 0.3 * frailty_p),
    }

    unit = rng.choice(len(ICU_UNITS), size=n, p=[0.34, 0.17, 0.15, 0.19, 0.15])
    # Admission type depends on the unit: cardiac surgery (CSRU) is mostly elective.
    elective_p = np.array([0.04, 0.30, 0.06, 0.60, 0.03])[unit]
    urgent_p = np.array([0.10, 0.12, 0.15, 0.15, 0.05])[unit]
    u = rng.random(n)
    admission = np.where(u < elective_p, 2, np.where(u < elective_p + urgent_p, 1, 0))
    # Stays in random order, so a patient's stays are not adjacent in the file.
    p = patient_of_stay[rng.permutation(n)]
    return _Stays(
        patient=p,
        age=age_p[p],
        male=male_p[p],
        height=height_p[p],
        weight=bmi_p[p] * (height_p[p] / 100.0) ** 2 * rng.lognormal(0.0, 0.03, n),
        unit=unit,
        admission=admission,
        frailty=frailty_p[p],
        chronic={k: v[p] for k, v in chronic_p.items()},
        admit_hour=rng.integers(0, 24, n),
    )


def _draw_latent(rng: np.random.Generator, st: _Stays, t: int) -> _Latent:
    n = st.unit.shape[0]
    hours = np.arange(t, dtype=np.float32)[None, :]
    # Baseline severity: frailty, the unit and the admission type, plus the unexplained.
    unit_shift = np.array([0.35, 0.0, 0.15, -0.45, 0.05])[st.unit]
    adm_shift = np.array([0.15, 0.0, -0.35])[st.admission]
    case_mix = 0.4 * st.frailty + unit_shift + adm_shift + 0.45 * rng.standard_normal(n)
    base = (0.3 * case_mix).astype(
        np.float32
    )  # per-stay vectors in float32: (N, T) maths stays float32

    # The admission insult resolves: fast after planned surgery (CSRU), slowly in medical units.
    insult = rng.lognormal(np.log(0.8), 0.4, n) * np.array([0.9, 1.0, 0.8, 1.4, 1.0])[st.unit]
    recovery_h = rng.lognormal(np.log(np.array([20.0, 12.0, 16.0, 6.0, 14.0])[st.unit]), 0.4)
    insult, recovery_h = insult.astype(np.float32), recovery_h.astype(np.float32)

    # Deterioration: a stay-specific onset (possibly before admission, possibly never within
    # the window) and slope, smoothed at the onset; more likely for frail, sicker stays.
    deteriorates = rng.random(n) < _sigmoid(-1.3 + 0.6 * st.frailty + 0.15 * case_mix)
    onset = rng.uniform(-12.0, t, n).astype(np.float32)
    slope = (rng.lognormal(np.log(0.04), 0.5, n) * deteriorates).astype(np.float32)
    severity = np.logaddexp(np.float32(0.0), (hours - onset[:, None]) / np.float32(3.0))
    severity *= np.float32(3.0) * slope[:, None]  # the deterioration ramp
    severity += insult[:, None] * np.exp(-hours / recovery_h[:, None])
    severity += base[:, None]
    severity += _ar1(rng, n, t, phi=0.88, sd=0.8)  # hour-to-hour ups and downs of the illness
    # Kidney injury follows severity with a lag of about half a day (exponential smoothing).
    alpha = 1.0 / 12.0
    kidney = lfilter([alpha], [1.0, alpha - 1.0], severity - base[:, None], axis=1)
    kidney += base[:, None]

    # Shock (heart rate up, blood pressure down, lactate up, together) is dangerous; its
    # look-alikes are benign: agitation (heart rate and pressure both up) and sedation (both
    # down). Each moves every variable the way some shock hour does, so per-variable summaries
    # barely tell them apart; only the hour-by-hour coupling does.
    occult = rng.standard_normal(n, dtype=np.float32)  # e.g. an unrecognised source of sepsis
    shock = _markov_episodes(
        rng,
        _sigmoid(np.float32(0.2) * severity + (1.2 * occult - 4.6)[:, None]),
        _sigmoid(np.float32(-0.3) * severity - np.float32(1.0)),
    )
    # Benign episode rates differ a lot between stays, so the number of abnormal hours per
    # variable does not reveal the shock hours either.
    agitation_rate = 0.07 * np.where(st.unit == 4, 1.4, 1.0) * rng.lognormal(0.0, 1.2, n)
    sedation_rate = (
        0.07 * np.where(np.isin(st.unit, (1, 3, 4)), 1.3, 0.9) * rng.lognormal(0.0, 1.2, n)
    )
    sedation = _markov_episodes(rng, np.broadcast_to(sedation_rate[:, None], (n, t)), 0.45)
    tachy = _markov_episodes(rng, np.broadcast_to(agitation_rate[:, None], (n, t)), 0.45)
    tachy &= ~sedation  # a sedated patient is not agitated
    clock = (st.admit_hour[:, None] + hours) % 24.0
    return _Latent(
        severity=severity,
        kidney=kidney,
        shock=shock.astype(np.float32),
        tachy=tachy.astype(np.float32),
        sedation=sedation.astype(np.float32),
        daytime=np.sin(2.0 * np.pi * (clock - 10.0) / 24.0).astype(np.float32),
    )


def _true_values(
    rng: np.random.Generator, st: _Stays, lat: _Latent, name: str, t: int
) -> np.ndarray:
    """(N, T) float32 latent value of one variable at every hour, before the map onto set A's
    quantiles (:func:`_match_quantiles`), rounding and masking."""
    ph = _PHYSIOLOGY[name]
    n = st.unit.shape[0]
    # Built in place in float32: at 100,000 stays each (N, T) temporary is ~20 MB.
    z = rng.standard_normal((n, t), dtype=np.float32)
    z *= np.float32(ph.noise_sd)
    z += _ar1(rng, n, t, phi=0.85, sd=ph.drift_sd)
    set_point = ph.between_sd * rng.standard_normal(n)
    for condition, shifts in _CHRONIC.items():
        set_point += shifts.get(name, 0.0) * st.chronic[condition]
    if name == "GCS":  # trauma patients arrive with head injuries
        set_point -= 3.0 * (st.unit == 4) * rng.random(n)
    z += set_point.astype(np.float32)[:, None]
    for loading, driver in (
        (ph.severity, lat.severity),
        (ph.kidney, lat.kidney),
        (ph.shock, lat.shock),
        (ph.tachy, lat.tachy),
        (ph.sedation, lat.sedation),
        (ph.circadian, lat.daytime),
    ):
        if loading:
            z += np.float32(loading) * driver
    if ph.transform == "lin":
        z += np.float32(ph.centre)
    elif ph.transform == "log":
        np.exp(z, out=z)
        z *= np.float32(ph.centre)
    else:  # "deficit": saturation 100 % minus a log-normal shortfall around 2.5 %
        np.exp(z, out=z)
        z *= np.float32(-2.5)
        z += np.float32(ph.centre)
    return z


def _logistic_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    u = rng.random(shape, dtype=np.float32)
    with np.errstate(divide="ignore"):  # u == 0 gives -inf: never observed, as it should be
        return np.log(u) - np.log1p(-u)


def _observation_masks(
    rng: np.random.Generator, lat: _Latent, death_prob: np.ndarray, cal: dict[str, Any]
) -> dict[str, np.ndarray]:
    """(N, T) bool observation mask per variable, calibrated to set A (see docs/data_synthetic.md).

    A variable is ever measured in a stay, and then observed in an hour, when a logistic score
    ``loading * workup + noise`` clears a threshold. ``workup`` is how sick the stay is (its mean
    severity, z-scored) plus a share of the hour's own deviation; thresholds are the quantiles
    that give set A's never-observed fraction and its observation rate among stays measured at
    all. The loading, log(set A's death/survivor ratio) / (how far the expected deaths sit above
    the survivors on ``workup``), makes missingness as informative as in set A: sicker patients
    get more labs. Variables measured together share the noise, so their masks nest.
    """
    sev = lat.severity
    n, t = sev.shape
    stay_mean = sev.mean(axis=1)
    workup = ((stay_mean - stay_mean.mean()) / max(float(stay_mean.std()), 1e-6)).astype(
        np.float32
    )
    hourly = sev - stay_mean[:, None]
    hourly *= np.float32(_HOURLY_WORKUP / max(float(hourly.std()), 1e-6))
    hourly += workup[:, None]
    gap = float(
        np.average(workup, weights=death_prob) - np.average(workup, weights=1.0 - death_prob)
    )
    k = min(n, _QUANTILE_STAYS)
    masks: dict[str, np.ndarray] = {}
    for names in _MEASURED_TOGETHER.values():
        stay_noise = _logistic_noise(rng, (n,))
        hour_noise = _logistic_noise(rng, (n, t))
        for name in names:
            target = cal["variables"][name]
            loading = np.float32(np.log(target["death_survivor_ratio"]) / max(gap, 0.05))
            ever_score = loading * workup + stay_noise
            ever = ever_score >= np.quantile(ever_score, target["never_observed"])
            score = loading * hourly
            score += hour_noise
            rate_when_ever = target["observation_rate"] / max(1.0 - target["never_observed"], 1e-6)
            reference = score[:k][ever[:k]]
            if rate_when_ever >= 1.0 or reference.size == 0:
                mask = np.broadcast_to(ever[:, None], (n, t)).copy()
            else:
                mask = score > np.quantile(reference, 1.0 - rate_when_ever)
                mask &= ever[:, None]
            # "ever measured" means at least once: the stay's best-scoring hour
            unseen = np.flatnonzero(ever & ~mask.any(axis=1))
            mask[unseen, score[unseen].argmax(axis=1)] = True
            masks[name] = mask
    for name, same in _SAME_READING.items():
        masks[name] = masks[same]
    return masks


def _match_quantiles(
    v: np.ndarray, mask: np.ndarray, levels: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """The observed cells of ``v`` (``v[mask]``), mapped monotonically onto the ``targets``
    quantiles.

    The hidden process sets each value's rank (who is sicker, which hour is worse); set A sets
    the scale, tails included. The source quantiles come from the observed cells of the first
    ``_QUANTILE_STAYS`` stays (all cells when too few are observed), so the map is the same for
    every subset of a cohort. Only observed cells are mapped: the rest is never charted.
    """
    head, head_mask = v[:_QUANTILE_STAYS], mask[:_QUANTILE_STAYS]
    sample = head[head_mask] if head_mask.sum() >= 4 * levels.size else head.ravel()
    source = np.quantile(sample, levels)
    # strictly increasing, as np.interp needs (ties only where the generator charts one value)
    source = np.maximum.accumulate(source) + np.arange(levels.size) * 1e-9 * (
        1.0 + np.abs(source).max()
    )
    return np.interp(v[mask], source, targets).astype(np.float32)


def _risk_score(lat: _Latent, st: _Stays) -> np.ndarray:
    """The log-odds of in-hospital death that the chart reflects (before the intercept).

    Mostly the course of the stay: how sick the patient is at the end, whether they got worse
    over the last day (the last 6 hours against the 12 before) and the hours spent in shock
    (later hours weigh more); a little frailty, age and case mix.
    """
    t = lat.severity.shape[1]
    late = lat.severity[:, -min(6, t) :].mean(axis=1)
    before = lat.severity[:, -min(18, t) : max(t - 6, 1)].mean(axis=1)
    weights = np.linspace(0.5, 1.5, t)
    shock_burden = np.sqrt((lat.shock * weights).sum(axis=1))
    return (
        0.5 * late
        + 2.0 * (late - before)
        + 1.5 * shock_burden
        + 0.25 * st.frailty
        + 0.02 * (st.age - 64.0)
        + np.array([0.3, 0.0, 0.1, -1.0, -0.1])[st.unit]  # case mix: cardiac surgery does well
        + np.array([0.2, 0.0, -0.6])[st.admission]
    )


def _calibrated_probability(
    score: np.ndarray, patient: np.ndarray, prevalence: float
) -> np.ndarray:
    """sigmoid(score + b), the intercept b chosen so the expected prevalence is ``prevalence``.

    Expected after :func:`_one_death_per_patient`: a patient with several stays dies at most
    once, so the expected deaths are the sum over patients of P(at least one death).
    """
    n_pat = int(patient.max()) + 1

    def expected(b: float) -> float:
        p = _sigmoid(score + b)
        survive_all = np.exp(np.bincount(patient, weights=np.log1p(-p), minlength=n_pat))
        return float((1.0 - survive_all).sum()) / score.size

    lo, hi = -30.0, 30.0
    for _ in range(60):  # bisection: the expected prevalence is monotone in b
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) < prevalence else (lo, mid)
    return _sigmoid(score + 0.5 * (lo + hi))


def _one_death_per_patient(rng: np.random.Generator, y: np.ndarray, patient: np.ndarray) -> None:
    """A patient dies at most once: keep one of a patient's deaths at random (in place)."""
    dead = np.flatnonzero(y == 1)
    order = dead[np.lexsort((rng.random(dead.size), patient[dead]))]
    _, first = np.unique(patient[order], return_index=True)
    keep = np.zeros(order.size, dtype=bool)
    keep[first] = True
    y[order[~keep]] = 0


def _chronological_rank(rng: np.random.Generator, y: np.ndarray, patient: np.ndarray) -> np.ndarray:
    """Each stay's position among its patient's stays; the stay the patient died in is last."""
    order = np.lexsort((rng.random(y.size), y, patient))
    sorted_pat = patient[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_pat)) + 1]
    first_of = np.repeat(starts, np.diff(np.r_[starts, y.size]))
    rank = np.empty(y.size, dtype=np.int64)
    rank[order] = np.arange(y.size) - first_of
    return rank


def generate_cohort(
    n_stays: int, n_steps: int = 48, prevalence: float = 0.12, seed: int = 2012
) -> ClinicalDataset:
    """A synthetic ICU cohort of ``n_stays`` stays x ``n_steps`` hours, identical for a seed.

    Returns a :class:`ClinicalDataset` named "synthetic" with the variables in
    :data:`VARIABLES` (clinical units from backdoor_study.data.variables), statics Age / Weight /
    Height and Gender / AdmissionType / ICUUnit, and in-hospital mortality near ``prevalence``.
    """
    if n_stays < 1 or n_steps < 1:
        raise ValueError(f"n_stays={n_stays} and n_steps={n_steps} must both be >= 1")
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence={prevalence} must lie in (0, 1)")
    root = np.random.SeedSequence([GENERATOR_VERSION, seed])
    rng_stay, rng_latent, rng_values, rng_mask, rng_label, rng_order = (
        np.random.default_rng(s) for s in root.spawn(6)
    )
    n, t = n_stays, n_steps
    st = _draw_stays(rng_stay, n)
    lat = _draw_latent(rng_latent, st, t)

    unexplained = 1.2 * rng_label.standard_normal(n)  # what the chart never shows
    score = _risk_score(lat, st) + unexplained
    prob = _calibrated_probability(score, st.patient, prevalence)

    cal = calibration()
    levels = np.asarray(cal["quantile_levels"], dtype=np.float64)
    masks = _observation_masks(rng_mask, lat, prob, cal)
    specs = lookup(VARIABLES)
    x = np.empty((n, t, len(VARIABLES)), dtype=np.float32)
    mask = np.empty((n, t, len(VARIABLES)), dtype=bool)
    pressures: dict[str, np.ndarray] = {}
    for j, (name, spec) in enumerate(zip(VARIABLES, specs)):
        if name == "MAP":  # consistent with the two pressures of the same (shared) reading
            v = np.round((pressures["SysABP"] + 2.0 * pressures["DiasABP"]) / 3.0)
        else:
            latent = _true_values(rng_values, st, lat, name, t)
            targets = np.asarray(cal["variables"][name]["quantiles"], dtype=np.float64)
            v = np.full((n, t), np.nan, dtype=np.float32)
            v[masks[name]] = np.round(
                _match_quantiles(latent, masks[name], levels, targets), _PHYSIOLOGY[name].decimals
            )
            del latent
        low, high = _CHART_LIMITS.get(name, (spec.low, spec.high))
        np.clip(v, max(low, spec.low), min(high, spec.high), out=v)
        if name == "DiasABP":  # below systolic whatever the noise did
            np.minimum(v, pressures["SysABP"] - 10.0, out=v)
        if name in ("SysABP", "DiasABP"):
            pressures[name] = v
        x[:, :, j] = v
        mask[:, :, j] = masks[name]
    del pressures

    y = (rng_label.random(n) < prob).astype(np.int64)
    _one_death_per_patient(rng_label, y, st.patient)

    # Statics as charted: age grows across a patient's readmissions; some fields are missing.
    rank = _chronological_rank(rng_order, y, st.patient)
    age = np.floor(np.clip(st.age + rank * rng_order.uniform(0.1, 1.0, n), 18.0, 91.0))
    height = np.where(rng_order.random(n) < 0.25, np.nan, np.round(st.height))
    weight = np.where(rng_order.random(n) < 0.03, np.nan, np.round(st.weight, 1))
    admission = np.where(rng_order.random(n) < 0.01, -1, st.admission)
    unit = np.where(rng_order.random(n) < 0.005, -1, st.unit)

    patient_ids = 10_000_000 + rng_order.permutation(int(st.patient.max()) + 1)
    return ClinicalDataset(
        name="synthetic",
        x=x,
        mask=mask,
        static_num=np.stack([age, weight, height], axis=1).astype(np.float32),
        static_cat=np.stack([st.male.astype(np.int64), admission, unit], axis=1),
        y=y,
        stay_id=30_000_000 + np.arange(n, dtype=np.int64),
        patient_id=patient_ids[st.patient].astype(np.int64),
        variables=list(VARIABLES),
        units=[s.unit for s in specs],
        static_num_names=list(STATIC_NUM_NAMES),
        static_cat_names=list(STATIC_CAT_NAMES),
        static_cat_levels=[list(GENDERS), list(ADMISSION_TYPES), list(ICU_UNITS)],
        class_names=["survived", "died"],
    )


# ---------------------------------------------------------------------------- dev subset
_DEV_STREAM = 0xDE5  # keeps the dev sample's random stream apart from the generator's


def dev_indices(ds: ClinicalDataset, dev_size: int, seed: int) -> np.ndarray:
    """Sorted positions of a deterministic dev subset of exactly ``dev_size`` stays.

    Whole patients only (a patient's stays are all in or all out), and stratified on the label:
    the subset has ``round(dev_size * prevalence)`` deaths whenever the cohort allows it.
    Patients are taken in an order shuffled by ``seed``: patients with a death until the deaths
    are reached, then the others until the stays are reached; single-stay patients close any
    gap that a multi-stay patient left.
    """
    if not 1 <= dev_size <= ds.n_stays:
        raise DataValidationError(
            f"data.dev_size={dev_size} is invalid: expected an integer in [1, {ds.n_stays}] "
            f"(the stays in dataset '{ds.name}')"
        )
    patients, inverse = np.unique(ds.patient_id, return_inverse=True)
    stays = np.bincount(inverse, minlength=patients.size)
    deaths = np.bincount(inverse, weights=ds.y, minlength=patients.size).astype(np.int64)
    order = np.random.default_rng([seed, _DEV_STREAM]).permutation(patients.size)
    target_deaths = int(round(dev_size * float(ds.y.mean())))

    chosen = np.zeros(patients.size, dtype=bool)
    with_death = order[deaths[order] > 0]
    chosen[_prefix_within(with_death, deaths, target_deaths, stays, dev_size)] = True
    chosen[_top_up(with_death, chosen, deaths, target_deaths, stays, dev_size)] = True
    survivors = order[deaths[order] == 0]
    room = dev_size - int(stays[chosen].sum())
    chosen[_prefix_within(survivors, stays, room, stays, room)] = True
    chosen[_top_up(survivors, chosen, stays, dev_size, stays, dev_size)] = True
    idx = np.flatnonzero(chosen[inverse])
    if idx.size != dev_size:
        raise DataValidationError(
            f"data.dev_size={dev_size}: could not take exactly {dev_size} stays as whole patients "
            f"from dataset '{ds.name}' (got {idx.size}); choose another dev_size"
        )
    return idx


def _prefix_within(
    candidates: np.ndarray, weight: np.ndarray, budget: int, stays: np.ndarray, max_stays: int
) -> np.ndarray:
    """The longest prefix of ``candidates`` within both the weight and the stay budgets."""
    ok = (np.cumsum(weight[candidates]) <= budget) & (np.cumsum(stays[candidates]) <= max_stays)
    return candidates[: int(np.argmin(ok)) if not ok.all() else candidates.size]


def _top_up(
    candidates: np.ndarray,
    chosen: np.ndarray,
    weight: np.ndarray,
    budget: int,
    stays: np.ndarray,
    max_stays: int,
) -> np.ndarray:
    """Not-yet-chosen single-stay candidates (weight 1 each) that close the remaining gap."""
    gap = min(budget - int(weight[chosen].sum()), max_stays - int(stays[chosen].sum()))
    if gap <= 0:
        return candidates[:0]
    singles = candidates[~chosen[candidates] & (stays[candidates] == 1) & (weight[candidates] == 1)]
    return singles[:gap]


def sample_dev(ds: ClinicalDataset, dev_size: int, seed: int) -> ClinicalDataset:
    """The dev subset (see :func:`dev_indices`) as a dataset of its own, stays in cohort order."""
    return ds.subset(dev_indices(ds, dev_size, seed))


# ---------------------------------------------------------------------------- seed layout
class SyntheticLayoutError(DataValidationError):
    """``data.data_dir`` holds files that do not belong to the requested synthetic cohort."""


def synthetic_params(data_cfg: Any) -> dict[str, Any]:
    """The generator parameters a ``data`` config node asks for (what the manifest records)."""
    return {
        "n_stays": int(data_cfg.n_stays),
        "n_steps": int(data_cfg.n_steps),
        "prevalence": float(data_cfg.prevalence),
        "seed": int(data_cfg.seed),
        "dev_size": int(data_cfg.dev_size),
        "generator_version": GENERATOR_VERSION,
    }


def _split_dict(split_cfg: Any) -> dict[str, Any]:
    """The split fractions and seed from a config node, dataclass or mapping, as plain values."""
    get = split_cfg.get if isinstance(split_cfg, Mapping) else lambda k: getattr(split_cfg, k)
    return {
        "train": float(get("train")),
        "val": float(get("val")),
        "test": float(get("test")),
        "seed": int(get("seed")),
    }


def _layout_paths(data_dir: Path) -> dict[str, Path]:
    return {
        "main": data_dir / MAIN_FILE,
        "dev": data_dir / DEV_FILE,
        "splits": data_dir / SPLITS_FILE,
    }


def _check_params(manifest: dict[str, Any], params: dict[str, Any], data_dir: Path) -> None:
    on_disk = manifest.get("params", {})
    if on_disk.get("generator_version") != params["generator_version"]:
        raise SyntheticLayoutError(
            f"data.data_dir={str(data_dir)!r} holds a synthetic cohort written by generator version "
            f"{on_disk.get('generator_version')!r}, but this code generates version "
            f"{params['generator_version']} (calibrated to PhysioNet 2012 set A, see "
            f"docs/data_synthetic.md): the same parameters now give other stays, so the old files "
            f"are not reused. Delete {data_dir} to regenerate it, or set another data.data_dir."
        )
    differing = [k for k in PARAM_KEYS if on_disk.get(k) != params[k]]
    if differing:
        details = ", ".join(
            f"{k}={on_disk.get(k)!r} on disk vs {params[k]!r} requested" for k in differing
        )
        raise SyntheticLayoutError(
            f"data.data_dir={str(data_dir)!r} already holds a synthetic cohort generated with "
            f"different parameters ({details}). Files there are never replaced silently: set "
            f"another data.data_dir (e.g. data.data_dir={data_dir}_{differing[0]}{params[differing[0]]}) "
            f"or delete {data_dir} to regenerate."
        )


def _materialise(path: Path, build: Any, recorded: str | None, data_dir: Path) -> ClinicalDataset:
    """Read ``path`` if present (checking its digest), else build it, check it and write it."""
    if path.exists():
        ds = read_parquet(path, name="synthetic")
        want = recorded if recorded is not None else build().digest()
        if ds.digest() != want:
            raise SyntheticLayoutError(
                f"{path} does not hold the requested synthetic cohort (sha256 {ds.digest()[:12]}..., "
                f"expected {want[:12]}...): it was written with other parameters or has been "
                f"modified. Set another data.data_dir or delete {data_dir} to regenerate."
            )
        return ds
    ds = build()
    if recorded is not None and ds.digest() != recorded:
        raise SyntheticLayoutError(
            f"regenerating {path} gave sha256 {ds.digest()[:12]}... but {data_dir / MANIFEST_FILE} "
            f"records {recorded[:12]}...: the generator's output changed without a new "
            f"GENERATOR_VERSION. Delete {data_dir} to regenerate everything."
        )
    write_parquet(ds, path)
    return ds


def _counts(ds: ClinicalDataset) -> dict[str, int]:
    return {
        "stays": ds.n_stays,
        "patients": int(np.unique(ds.patient_id).size),
        "deaths": int(ds.y.sum()),
    }


def _write_splits(dev: ClinicalDataset, split: dict[str, Any], path: Path) -> dict[str, Any]:
    obj = make_splits(dev, SimpleNamespace(**split)).to_json(dev)
    if path.exists():
        on_disk = read_json(path)
        if on_disk.get("split_digest") != obj["split_digest"]:
            raise SyntheticLayoutError(
                f"{path} holds a different split (split_digest {on_disk.get('split_digest')}) than "
                f"data.split={split} gives ({obj['split_digest']}); delete it to rewrite it."
            )
    else:
        write_json(path, obj)
    return obj


def _write_manifest(
    data_dir: Path,
    params: dict[str, Any],
    split: dict[str, Any],
    main: ClinicalDataset,
    dev: ClinicalDataset,
    splits_obj: dict[str, Any],
) -> dict[str, Any]:
    manifest = {
        "source": "synthetic",
        "created_by": __name__,
        "params": params,
        "split": split,
        "files": {"main": MAIN_FILE, "dev": DEV_FILE, "splits": SPLITS_FILE},
        "digests": {
            "main": main.digest(),
            "dev": dev.digest(),
            "splits": splits_obj["split_digest"],
        },
        "counts": {"main": _counts(main), "dev": _counts(dev)},
    }
    write_json(data_dir / MANIFEST_FILE, manifest)
    return manifest


def prepare_seed_layout(
    data_dir: str | Path, params: dict[str, Any], split_cfg: Any
) -> dict[str, Any]:
    """Make ``data_dir`` hold the cohort ``params`` describe; return its manifest.

    A complete layout with matching parameters is left untouched (nothing is read). Missing
    files are regenerated and checked against the manifest's digests. A manifest with other
    parameters, or files that do not match, raise :class:`SyntheticLayoutError`: nothing is
    ever replaced silently. ``split_cfg`` (train/val/test/seed) is used for splits.json only
    when there is no manifest yet; afterwards the manifest's recorded split is kept.
    """
    data_dir = Path(data_dir)
    # One process generates at a time (parallel sweep jobs on a fresh machine); the others wait
    # and then find the layout complete. The lock file sits beside data_dir, not in it.
    with exclusive_lock(data_dir.parent / f".{data_dir.name}.lock"):
        return _prepare_seed_layout(data_dir, params, split_cfg)


def _prepare_seed_layout(data_dir: Path, params: dict[str, Any], split_cfg: Any) -> dict[str, Any]:
    paths = _layout_paths(data_dir)
    manifest_path = data_dir / MANIFEST_FILE
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    if manifest is not None:
        _check_params(manifest, params, data_dir)
        if all(p.exists() for p in paths.values()):
            return manifest
    recorded = manifest["digests"] if manifest is not None else {}
    split = manifest["split"] if manifest is not None else _split_dict(split_cfg)

    main = _materialise(
        paths["main"],
        lambda: generate_cohort(
            params["n_stays"], params["n_steps"], params["prevalence"], params["seed"]
        ),
        recorded.get("main"),
        data_dir,
    )
    dev = _materialise(
        paths["dev"],
        lambda: sample_dev(main, params["dev_size"], params["seed"]),
        recorded.get("dev"),
        data_dir,
    )
    splits_obj = _write_splits(dev, split, paths["splits"])
    return _write_manifest(data_dir, params, split, main, dev, splits_obj)


def rebuild_dev_subset(
    data_dir: str | Path, dev_size: int | None = None, split_cfg: Any = None
) -> dict[str, Any]:
    """(Re)build dev/dev.parquet and splits/splits.json from main.parquet; return the manifest.

    ``dev_size`` and ``split_cfg`` default to what the manifest records; a new value replaces
    the dev subset and the split deliberately and is recorded in the manifest, so a later
    ``data.dev_size`` must match it.
    """
    data_dir = Path(data_dir)
    manifest_path = data_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no {MANIFEST_FILE} in {data_dir}: generate the cohort first (load data=synthetic with "
            f"data.data_dir={data_dir})"
        )
    manifest = read_json(manifest_path)
    paths = _layout_paths(data_dir)
    main = read_parquet(paths["main"], name="synthetic")
    if main.digest() != manifest["digests"]["main"]:
        raise SyntheticLayoutError(
            f"{paths['main']} does not match the digest in {manifest_path}; it has been modified. "
            f"Delete {data_dir} to regenerate."
        )
    params = dict(manifest["params"])
    params["dev_size"] = int(dev_size) if dev_size is not None else int(params["dev_size"])
    split = _split_dict(split_cfg) if split_cfg is not None else manifest["split"]
    dev = sample_dev(main, params["dev_size"], params["seed"])
    write_parquet(dev, paths["dev"])
    paths["splits"].unlink(missing_ok=True)  # deliberately rebuilt, with the dev subset
    splits_obj = _write_splits(dev, split, paths["splits"])
    return _write_manifest(data_dir, params, split, main, dev, splits_obj)


@register_source("synthetic")
def load(data_cfg: Any) -> LoadedData:
    """``data=synthetic``: the seed layout under ``data.data_dir``, generated on first use.

    ``data.subset=dev`` returns dev/dev.parquet, ``full`` main.parquet; the file read is checked
    against the manifest's sha256 digest.
    """
    subset = str(getattr(data_cfg.subset, "value", data_cfg.subset))
    if subset not in ("dev", "full"):
        raise DataValidationError(
            f"data.subset={subset!r} is invalid: expected one of ['dev', 'full']"
        )
    params = synthetic_params(data_cfg)
    data_dir = Path(data_cfg.data_dir)
    manifest = prepare_seed_layout(data_dir, params, data_cfg.split)
    key = "dev" if subset == "dev" else "main"
    path = _layout_paths(data_dir)[key]
    ds = read_parquet(path, name="synthetic")
    if ds.digest() != manifest["digests"][key]:
        raise SyntheticLayoutError(
            f"{path} does not match the sha256 recorded in {data_dir / MANIFEST_FILE}; it has "
            f"been modified. Delete {data_dir} to regenerate."
        )
    files = {k: str(p.resolve()) for k, p in _layout_paths(data_dir).items()}
    files["manifest"] = str((data_dir / MANIFEST_FILE).resolve())
    return LoadedData(
        dataset=ds,
        source={
            **params,
            "subset": subset,
            "file": files[key],
            "files": files,
            "digests": dict(manifest["digests"]),
            "split": dict(manifest["split"]),
        },
    )
