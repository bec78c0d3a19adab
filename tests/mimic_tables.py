"""Small fake tables in the MIMIC-IV (v2.x) schema, for testing the cohort SQL and conversion.

No real patient data: every value is made up. :func:`write_mimic_tables` writes ``hosp/`` and
``icu/`` under a folder (``csv.gz`` as PhysioNet distributes them, or ``parquet``) and returns a
:class:`FakeMimic` saying which stays the default cohort must keep, why the others go, and a few
measurements whose hourly values are known exactly.

30 patients, 40 ICU stays. Stays 1-8 (ids 30000001..) are the hand-made cases below; the rest are
adult first stays of 60-200 h, all included, with hourly vitals and a few labs.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS: dict[str, tuple[str, ...]] = {
    "hosp/patients": (
        "subject_id",
        "gender",
        "anchor_age",
        "anchor_year",
        "anchor_year_group",
        "dod",
    ),
    "hosp/admissions": (
        "subject_id",
        "hadm_id",
        "admittime",
        "dischtime",
        "deathtime",
        "admission_type",
        "admission_location",
        "discharge_location",
        "insurance",
        "race",
        "hospital_expire_flag",
    ),
    "icu/icustays": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "first_careunit",
        "last_careunit",
        "intime",
        "outtime",
        "los",
    ),
    "icu/chartevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "charttime",
        "storetime",
        "itemid",
        "value",
        "valuenum",
        "valueuom",
        "warning",
    ),
    "hosp/labevents": (
        "labevent_id",
        "subject_id",
        "hadm_id",
        "specimen_id",
        "itemid",
        "charttime",
        "storetime",
        "value",
        "valuenum",
        "valueuom",
        "flag",
        "priority",
    ),
    "icu/outputevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "charttime",
        "storetime",
        "itemid",
        "value",
        "valueuom",
    ),
}

MICU = "Medical Intensive Care Unit (MICU)"
SICU = "Surgical Intensive Care Unit (SICU)"
CVICU = "Cardiac Vascular Intensive Care Unit (CVICU)"
UNITS = (MICU, SICU, CVICU)
ADMISSION_TYPES = ("EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT")
SUBJECT0, HADM0, STAY0 = 10000000, 20000000, 30000000

# Known, hand-made values in stay 30000001: (variable, hour) -> hourly mean / last.
KNOWN_STAY = STAY0 + 1


@dataclass
class FakeMimic:
    root: Path
    included: dict[int, dict[str, Any]] = field(default_factory=dict)  # stay_id -> expectations
    excluded: dict[int, str] = field(default_factory=dict)  # stay_id -> reason
    n_patients: int = 0
    n_stays: int = 0
    # (stay_id, variable, hour) -> (mean, last) for the hand-made measurements
    known: dict[tuple[int, str, int], tuple[float, float]] = field(default_factory=dict)
    # (stay_id, variable, hour) that must stay unobserved
    unobserved: list[tuple[int, str, int]] = field(default_factory=list)


class _Builder:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {k: [] for k in COLUMNS}
        self.lab_id = 0

    def patient(self, subject: int, gender: str, anchor_age: int, anchor_year: int) -> None:
        self.rows["hosp/patients"].append(
            {
                "subject_id": subject,
                "gender": gender,
                "anchor_age": anchor_age,
                "anchor_year": anchor_year,
                "anchor_year_group": "2014 - 2016",
                "dod": None,
            }
        )

    def admission(
        self, subject: int, hadm: int, admit: datetime, hours: float, died: bool, adm_type: str
    ) -> None:
        disch = admit + timedelta(hours=hours)
        self.rows["hosp/admissions"].append(
            {
                "subject_id": subject,
                "hadm_id": hadm,
                "admittime": admit,
                "dischtime": disch,
                "deathtime": disch if died else None,
                "admission_type": adm_type,
                "admission_location": "EMERGENCY ROOM",
                "discharge_location": "DIED" if died else "HOME",
                "insurance": "Other",
                "race": "UNKNOWN",
                "hospital_expire_flag": int(died),
            }
        )

    def stay(
        self, subject: int, hadm: int, stay: int, unit: str, intime: datetime, hours: float
    ) -> None:
        self.rows["icu/icustays"].append(
            {
                "subject_id": subject,
                "hadm_id": hadm,
                "stay_id": stay,
                "first_careunit": unit,
                "last_careunit": unit,
                "intime": intime,
                "outtime": intime + timedelta(hours=hours),
                "los": hours / 24.0,
            }
        )

    def chart(
        self,
        subject: int,
        hadm: int,
        stay: int,
        t: datetime,
        itemid: int,
        valuenum: float | None,
        uom: str = "",
        text: str | None = None,
    ) -> None:
        self.rows["icu/chartevents"].append(
            {
                "subject_id": subject,
                "hadm_id": hadm,
                "stay_id": stay,
                "caregiver_id": 1,
                "charttime": t,
                "storetime": t + timedelta(minutes=5),
                "itemid": itemid,
                "value": text if text is not None else _fmt(valuenum),
                "valuenum": valuenum,
                "valueuom": uom,
                "warning": 0,
            }
        )

    def lab(
        self,
        subject: int,
        hadm: int | None,
        t: datetime,
        itemid: int,
        valuenum: float,
        uom: str = "",
    ) -> None:
        self.lab_id += 1
        self.rows["hosp/labevents"].append(
            {
                "labevent_id": self.lab_id,
                "subject_id": subject,
                "hadm_id": hadm,
                "specimen_id": self.lab_id,
                "itemid": itemid,
                "charttime": t,
                "storetime": t + timedelta(hours=1),
                "value": _fmt(valuenum),
                "valuenum": valuenum,
                "valueuom": uom,
                "flag": None,
                "priority": "STAT",
            }
        )

    def output(
        self, subject: int, hadm: int, stay: int, t: datetime, itemid: int, ml: float
    ) -> None:
        self.rows["icu/outputevents"].append(
            {
                "subject_id": subject,
                "hadm_id": hadm,
                "stay_id": stay,
                "caregiver_id": 1,
                "charttime": t,
                "storetime": t,
                "itemid": itemid,
                "value": ml,
                "valueuom": "ml",
            }
        )


def _fmt(v: float | None) -> str | None:
    return None if v is None else f"{v:g}"


def write_mimic_tables(root: str | Path, fmt: str = "csv.gz", seed: int = 0) -> FakeMimic:
    """Write the fake MIMIC-IV tables under ``root`` (``fmt``: csv.gz, csv or parquet)."""
    root = Path(root)
    b = _Builder()
    fake = FakeMimic(root=root)
    h = timedelta(hours=1)
    m = timedelta(minutes=1)

    def expect(stay: int, subject: int, label: int, age: int, gender: str, adm: str, unit: str):
        fake.included[stay] = {
            "subject_id": subject,
            "label": label,
            "age": age,
            "gender": gender,
            "admission_type": adm,
            "first_careunit": unit,
        }

    # 1. The hand-made stay: adult, died, 72 h, every mapping rule exercised.
    s, a, st = SUBJECT0 + 1, HADM0 + 1, STAY0 + 1
    t0 = datetime(2150, 3, 1, 8, 0, 0)
    b.patient(s, "F", 65, 2150)
    b.admission(s, a, t0 - 6 * h, 200, died=True, adm_type="EW EMER.")
    b.stay(s, a, st, MICU, t0, 72)
    expect(st, s, 1, 65, "F", "EW EMER.", MICU)
    b.chart(s, a, st, t0 + 10 * m, 220045, 80.0, "bpm")
    b.chart(s, a, st, t0 + 40 * m, 220045, 90.0, "bpm")
    b.chart(s, a, st, t0 + 5 * h + 30 * m, 220045, 100.0, "bpm")
    b.chart(s, a, st, t0 + 7 * h, 220045, 999.0, "bpm")  # implausible -> missing
    b.chart(s, a, st, t0 + 9 * h, 220045, 999.0, "bpm")  # implausible, next to a plausible one
    b.chart(s, a, st, t0 + 9 * h + 30 * m, 220045, 70.0, "bpm")
    b.chart(s, a, st, t0 - 30 * m, 220045, 60.0, "bpm")  # before intime -> not in the grid
    b.chart(s, a, st, t0 + 48 * h, 220045, 61.0, "bpm")  # at the window's end -> not in it
    b.chart(s, a, st, t0 + 2 * h, 223761, 98.6, "°F")  # -> 37.0 degC
    b.chart(s, a, st, t0 + 3 * h + 15 * m, 223762, 38.5, "°C")
    b.chart(s, a, st, t0 + 3 * h + 45 * m, 223761, 102.2, "°F")  # -> 39.0 degC
    for itemid, v in ((220739, 4.0), (223900, 5.0), (223901, 6.0)):
        b.chart(s, a, st, t0 + 1 * h, itemid, v)  # GCS 15
    for itemid, v in ((220739, 3.0), (223901, 5.0)):
        b.chart(s, a, st, t0 + 10 * h, itemid, v)  # verbal missing -> no GCS
    b.chart(s, a, st, t0 + 4 * h, 223835, 50.0, "%")  # percent -> 0.5
    b.chart(s, a, st, t0 + 6 * h, 223835, 0.4, "")  # already a fraction
    b.chart(s, a, st, t0 + 12 * h, 223849, None, text="CMV/ASSIST")  # MechVent (text item)
    b.chart(s, a, st, t0 + 20 * m, 226512, 82.0, "kg")
    b.chart(s, a, st, t0 + 2 * h, 999999, 5.0)  # an itemid nobody maps
    b.lab(s, a, t0 + 6 * h + 10 * m, 50813, 2.5, "mmol/L")  # Lactate
    b.lab(s, None, t0 + 11 * h, 50912, 1.2, "mg/dL")  # Creatinine, no hadm_id: joined by time
    b.lab(s, a, t0 - 2 * h, 50912, 3.3, "mg/dL")  # before the ICU -> not in the grid
    b.output(s, a, st, t0 + 8 * h + 5 * m, 226559, 100.0)  # Foley
    b.output(s, a, st, t0 + 8 * h + 50 * m, 226560, 50.0)  # Void: hour 8 urine = 150
    b.output(s, a, st, t0 + 13 * h, 227489, 300.0)  # irrigant out
    b.output(s, a, st, t0 + 13 * h, 227488, 200.0)  # irrigant in: hour 13 urine = 100
    fake.known.update(
        {
            (st, "HR", 0): (85.0, 90.0),
            (st, "HR", 5): (100.0, 100.0),
            (st, "HR", 9): (70.0, 70.0),
            (st, "Temp", 2): (37.0, 37.0),
            (st, "Temp", 3): (38.75, 39.0),
            (st, "GCS", 1): (15.0, 15.0),
            (st, "FiO2", 4): (0.5, 0.5),
            (st, "FiO2", 6): (0.4, 0.4),
            (st, "MechVent", 12): (1.0, 1.0),
            (st, "Weight", 0): (82.0, 82.0),
            (st, "Lactate", 6): (2.5, 2.5),
            (st, "Creatinine", 11): (1.2, 1.2),
            (st, "Urine", 8): (150.0, 150.0),
            (st, "Urine", 13): (100.0, 100.0),
        }
    )
    fake.unobserved += [(st, "HR", 7), (st, "GCS", 10), (st, "HR", 47)]

    # 2, 3, 6, 7: one admission with one ICU stay each.
    # (subject, hadm, stay offsets), gender, anchor_age, anchor_year, admittime, ICU hours,
    # died, admission type, unit, then the age the cohort must compute or why the stay goes
    single_stays = [
        ((2, 2, 2), "M", 10, 2160, datetime(2160, 5, 2, 12), 72, False, "URGENT", SICU, "child"),
        ((3, 3, 3), "M", 70, 2161, datetime(2161, 1, 10), 30, True, "EW EMER.", MICU, "short stay"),
        # anchor_age 17 in 2150, admitted in 2152: 19, an adult; admitted in 2150: a child
        ((6, 7, 8), "F", 17, 2150, datetime(2152, 4, 4, 4), 49, False, "URGENT", SICU, 19),
        ((7, 8, 9), "M", 17, 2150, datetime(2150, 4, 4, 4), 80, False, "URGENT", SICU, "child"),
    ]
    for (ks, ka, kst), gender, anchor_age, year, t, hours, died, adm, unit, outcome in single_stays:
        s, a, st = SUBJECT0 + ks, HADM0 + ka, STAY0 + kst
        b.patient(s, gender, anchor_age, year)
        b.admission(s, a, t, hours + 70, died=died, adm_type=adm)
        b.stay(s, a, st, unit, t + h, hours)
        if isinstance(outcome, str):
            fake.excluded[st] = outcome
        else:
            expect(st, s, int(died), outcome, gender, adm, unit)

    # 4. One admission, two ICU stays: only the first counts.
    s, a = SUBJECT0 + 4, HADM0 + 4
    t = datetime(2162, 7, 1, 0, 0, 0)
    b.patient(s, "F", 55, 2162)
    b.admission(s, a, t, 400, died=False, adm_type="ELECTIVE")
    b.stay(s, a, STAY0 + 4, CVICU, t + 2 * h, 60)
    b.stay(s, a, STAY0 + 5, MICU, t + 200 * h, 50)
    expect(STAY0 + 4, s, 0, 55, "F", "ELECTIVE", CVICU)
    fake.excluded[STAY0 + 5] = "second stay of the admission"

    # 5. One patient, two admissions (one stay each): two stays, one patient_id.
    s = SUBJECT0 + 5
    b.patient(s, "M", 80, 2155)
    t = datetime(2155, 2, 1, 0, 0, 0)
    b.admission(s, HADM0 + 5, t, 100, died=False, adm_type="URGENT")
    b.stay(s, HADM0 + 5, STAY0 + 6, SICU, t + h, 50)
    expect(STAY0 + 6, s, 0, 80, "M", "URGENT", SICU)
    t = datetime(2156, 9, 1, 0, 0, 0)
    b.admission(s, HADM0 + 6, t, 100, died=True, adm_type="EW EMER.")
    b.stay(s, HADM0 + 6, STAY0 + 7, MICU, t + h, 70)
    expect(STAY0 + 7, s, 1, 81, "M", "EW EMER.", MICU)

    # 8. First stay of the admission short, second long: the admission contributes nothing
    # (the first stay is chosen before the length criterion).
    s, a = SUBJECT0 + 8, HADM0 + 9
    t = datetime(2170, 1, 1, 0, 0, 0)
    b.patient(s, "F", 45, 2170)
    b.admission(s, a, t, 300, died=False, adm_type="EW EMER.")
    b.stay(s, a, STAY0 + 10, MICU, t + h, 20)
    b.stay(s, a, STAY0 + 11, MICU, t + 100 * h, 60)
    fake.excluded[STAY0 + 10] = "short stay"
    fake.excluded[STAY0 + 11] = "second stay of the admission"

    # Filler: 22 more patients, 29 stays, all included.
    rng = np.random.default_rng(seed)
    next_hadm, next_stay = HADM0 + 100, STAY0 + 100
    for k in range(22):
        s = SUBJECT0 + 9 + k
        gender = "F" if k % 2 else "M"
        age = int(rng.integers(20, 90))
        anchor_year = 2130 + k
        b.patient(s, gender, age, anchor_year)
        for adm_no in range(2 if k < 7 else 1):
            t = datetime(anchor_year, 1 + 5 * adm_no, 3, int(rng.integers(0, 24)), 0, 0)
            hours = float(rng.integers(60, 200))
            died = bool(rng.random() < 0.3)
            adm_type = ADMISSION_TYPES[int(rng.integers(0, len(ADMISSION_TYPES)))]
            unit = UNITS[int(rng.integers(0, len(UNITS)))]
            hadm, stay = next_hadm, next_stay
            next_hadm, next_stay = next_hadm + 1, next_stay + 1
            b.admission(s, hadm, t, hours + 48, died=died, adm_type=adm_type)
            intime = t + timedelta(hours=3, minutes=17)
            b.stay(s, hadm, stay, unit, intime, hours)
            expect(stay, s, int(died), age, gender, adm_type, unit)
            for hour in range(0, 50, 1):
                ct = intime + timedelta(hours=hour, minutes=int(rng.integers(0, 60)))
                b.chart(s, hadm, stay, ct, 220045, float(rng.integers(60, 120)), "bpm")
                if hour % 4 == 0:
                    b.chart(s, hadm, stay, ct, 220179, float(rng.integers(90, 150)), "mmHg")
                    b.chart(s, hadm, stay, ct, 223762, round(float(rng.normal(37, 0.5)), 1), "°C")
                    b.output(s, hadm, stay, ct, 226559, float(rng.integers(20, 200)))
                if hour % 12 == 0:
                    b.lab(s, hadm, ct, 50971, round(float(rng.normal(4.2, 0.4)), 1), "mEq/L")

    fake.n_patients = len(b.rows["hosp/patients"])
    fake.n_stays = len(b.rows["icu/icustays"])
    for table, rows in b.rows.items():
        _write(root, table, COLUMNS[table], rows, fmt)
    return fake


def _write(
    root: Path, table: str, columns: tuple[str, ...], rows: list[dict[str, Any]], fmt: str
) -> None:
    path = root / f"{table}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        data = {c: [r[c] for r in rows] for c in columns}
        pq.write_table(pa.table(data), path)
        return
    opener = gzip.open if fmt == "csv.gz" else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r[c]) for c in columns])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:g}" if abs(v) < 1e15 else repr(v)
    return str(v)
