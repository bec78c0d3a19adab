"""The shared vocabulary of clinical time-series variables: names, units, plausible ranges.

One home for these facts. Every source maps its own codes onto these names (PhysioNet 2012 uses
them as they are; MIMIC-IV itemids map onto them in scripts/01_build_cohort.sql; the synthetic
cohort draws a subset), so a trigger configured as ``variables: [HR]`` means the same thing on
every dataset. Ranges are physiologically plausible bounds used for cleaning and realism checks,
not reference intervals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backdoor_study.data.schema import DataValidationError


@dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    low: float
    high: float
    description: str
    kind: str  # "vital" | "lab" | "other"


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in [
        Variable("HR", "bpm", 0, 300, "heart rate", "vital"),
        Variable("SysABP", "mmHg", 0, 300, "invasive systolic arterial blood pressure", "vital"),
        Variable("DiasABP", "mmHg", 0, 200, "invasive diastolic arterial blood pressure", "vital"),
        Variable("MAP", "mmHg", 0, 250, "invasive mean arterial pressure", "vital"),
        Variable("NISysABP", "mmHg", 0, 300, "non-invasive systolic blood pressure", "vital"),
        Variable("NIDiasABP", "mmHg", 0, 200, "non-invasive diastolic blood pressure", "vital"),
        Variable("NIMAP", "mmHg", 0, 250, "non-invasive mean arterial pressure", "vital"),
        Variable("RespRate", "breaths/min", 0, 80, "respiratory rate", "vital"),
        Variable("Temp", "degC", 24, 45, "body temperature", "vital"),
        Variable("SaO2", "%", 0, 100, "arterial oxygen saturation", "vital"),
        Variable("GCS", "points", 3, 15, "Glasgow coma scale", "vital"),
        Variable("Urine", "mL", 0, 5000, "urine output in the hour", "vital"),
        Variable("FiO2", "fraction", 0.21, 1.0, "fraction of inspired oxygen", "other"),
        Variable("MechVent", "flag", 0, 1, "mechanical ventilation", "other"),
        Variable("Weight", "kg", 20, 300, "body weight", "other"),
        Variable("Lactate", "mmol/L", 0.1, 30, "lactate", "lab"),
        Variable("Creatinine", "mg/dL", 0.1, 20, "creatinine", "lab"),
        Variable("BUN", "mg/dL", 1, 200, "blood urea nitrogen", "lab"),
        Variable("Glucose", "mg/dL", 10, 1200, "glucose", "lab"),
        Variable("K", "mEq/L", 1, 10, "potassium", "lab"),
        Variable("Na", "mEq/L", 100, 180, "sodium", "lab"),
        Variable("HCO3", "mmol/L", 2, 55, "bicarbonate", "lab"),
        Variable("HCT", "%", 10, 70, "haematocrit", "lab"),
        Variable("WBC", "10^9/L", 0, 200, "white blood cell count", "lab"),
        Variable("Platelets", "10^9/L", 1, 1500, "platelet count", "lab"),
        Variable("pH", "pH", 6.5, 8.0, "arterial pH", "lab"),
        Variable("PaCO2", "mmHg", 5, 150, "arterial partial pressure of CO2", "lab"),
        Variable("PaO2", "mmHg", 10, 700, "arterial partial pressure of O2", "lab"),
        Variable("Mg", "mg/dL", 0.2, 10, "magnesium", "lab"),
        Variable("Bilirubin", "mg/dL", 0, 60, "total bilirubin", "lab"),
        Variable("Albumin", "g/dL", 0.5, 6.5, "albumin", "lab"),
        Variable("ALP", "IU/L", 5, 3000, "alkaline phosphatase", "lab"),
        Variable("ALT", "IU/L", 1, 10000, "alanine aminotransferase", "lab"),
        Variable("AST", "IU/L", 1, 15000, "aspartate aminotransferase", "lab"),
        Variable("Cholesterol", "mg/dL", 20, 600, "cholesterol", "lab"),
        Variable("TroponinI", "ug/L", 0, 100, "troponin I", "lab"),
        Variable("TroponinT", "ug/L", 0, 30, "troponin T", "lab"),
    ]
}


def lookup(names: Iterable[str], key: str = "variables") -> list[Variable]:
    """The registry entries for ``names``; an unknown name raises, listing the known ones."""
    names = list(names)
    unknown = [n for n in names if n not in VARIABLES]
    if unknown:
        raise DataValidationError(f"{key}: unknown variable name(s) {unknown}; known variables are {sorted(VARIABLES)}")
    return [VARIABLES[n] for n in names]


def units_for(names: Iterable[str]) -> list[str]:
    return [v.unit for v in lookup(names)]
