"""MIMIC-IV -> the canonical :class:`ClinicalDataset`, written as canonical Parquet.

MIMIC-IV is credentialed data, so nothing here ships it: :func:`build_cohort` runs on a local copy
(``hosp/`` and ``icu/`` as distributed, CSV(.gz) or Parquet) and writes a file that then loads with
``data=parquet data.path=...``. The steps:

1. :func:`attach_tables` creates DuckDB views ``hosp.*`` and ``icu.*`` over the files;
2. :func:`run_cohort_sql` runs ``scripts/01_build_cohort.sql`` (cohort definition and the
   itemid -> variable mapping, in one place), which leaves the tables ``cohort`` and
   ``observations`` (long format) in the connection;
3. :func:`observations_to_dataset` checks every variable name against ``variables.py``, drops
   values outside the plausible ranges there (cleaning before aggregation, so one typo does not
   spoil an hour's mean), aggregates per hour (mean or last) and builds the dataset.

This module owns the conversion only; the cohort definition and the mapping belong to the SQL,
the vocabulary and the ranges to ``variables.py``, the layout to ``schema.py``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from backdoor_study.data.schema import ClinicalDataset, DataValidationError, write_parquet
from backdoor_study.data.variables import VARIABLES, lookup

log = logging.getLogger(__name__)

DEFAULT_SQL = Path(__file__).resolve().parents[2] / "scripts" / "01_build_cohort.sql"
# The MIMIC-IV tables the SQL reads, by schema (module folder in the distribution).
REQUIRED_TABLES: dict[str, tuple[str, ...]] = {
    "hosp": ("patients", "admissions", "labevents"),
    "icu": ("icustays", "chartevents", "outputevents"),
}
# Suffixes tried for each table, in order of preference.
TABLE_SUFFIXES = (".parquet", "", ".csv.gz", ".csv")  # "" = a folder of Parquet files
AGGREGATES = ("mean", "last")
# Canonical static name -> column of the SQL's ``cohort`` table.
STATIC_NUMERIC = {"Age": "age"}
STATIC_CATEGORICAL = {
    "Gender": "gender",
    "AdmissionType": "admission_type",
    "ICUUnit": "first_careunit",
}
COHORT_COLUMNS = (
    "stay_id",
    "subject_id",
    "label",
    *STATIC_NUMERIC.values(),
    *STATIC_CATEGORICAL.values(),
)
OBSERVATION_COLUMNS = ("stay_id", "subject_id", "charttime", "hour", "variable", "value")


@dataclass
class CohortBuild:
    """What :func:`build_cohort` produced, with the numbers a methods section needs."""

    dataset: ClinicalDataset
    path: Path
    cohort_flow: list[dict[str, Any]]
    out_of_range: dict[str, int]
    parameters: dict[str, Any]
    sql_sha256: str
    tables: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the build (no patient-level data)."""
        ds = self.dataset
        return {
            "path": str(self.path),
            "digest": ds.digest(),
            "n_stays": ds.n_stays,
            "n_patients": int(np.unique(ds.patient_id).size),
            "n_died": int(ds.y.sum()),
            "prevalence": float(ds.y.mean()),
            "variables": ds.variables,
            "fraction_observed": {
                v: float(ds.mask[:, :, j].mean()) for j, v in enumerate(ds.variables)
            },
            "cohort_flow": self.cohort_flow,
            "out_of_range_dropped": self.out_of_range,
            "parameters": self.parameters,
            "sql_sha256": self.sql_sha256,
            "tables": self.tables,
        }


def find_table_file(mimic_dir: str | Path, schema: str, table: str) -> Path:
    """The file (or Parquet folder) holding ``schema.table`` under ``mimic_dir``."""
    base = Path(mimic_dir) / schema
    tried = [base / f"{table}{suffix}" for suffix in TABLE_SUFFIXES]
    for path in tried:
        if path.is_file() or (path.is_dir() and any(path.glob("*.parquet"))):
            return path
    raise FileNotFoundError(
        f"MIMIC-IV table {schema}.{table} not found under {Path(mimic_dir)}; tried "
        f"{[str(p) for p in tried]} (point mimic_dir at the folder holding hosp/ and icu/)"
    )


def _reader(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.is_dir():
        return f"read_parquet('{quoted}/*.parquet')"
    if path.suffix == ".parquet":
        return f"read_parquet('{quoted}')"
    # Every column as text: the SQL casts what it uses, so a sniffer guessing BIGINT from the
    # first rows of a 30 GB file can never fail half-way through it.
    return f"read_csv('{quoted}', header = true, all_varchar = true)"


def attach_tables(con: duckdb.DuckDBPyConnection, mimic_dir: str | Path) -> dict[str, str]:
    """Create views ``hosp.<table>`` and ``icu.<table>`` over the files; returns table -> file."""
    found: dict[str, str] = {}
    for schema, tables in REQUIRED_TABLES.items():
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for table in tables:
            path = find_table_file(mimic_dir, schema, table)
            con.execute(f"CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM {_reader(path)}")
            found[f"{schema}.{table}"] = str(path)
    return found


def run_cohort_sql(
    con: duckdb.DuckDBPyConnection,
    sql: str | Path | None = None,
    *,
    min_age: int = 18,
    min_los_hours: float = 48.0,
    n_hours: int = 48,
    all_stays: bool = False,
) -> str:
    """Run the cohort SQL (default ``scripts/01_build_cohort.sql``) with these parameters.

    Leaves ``itemid_map``, ``cohort``, ``observations`` and ``cohort_flow`` in ``con``.
    Returns the sha256 of the SQL text, for provenance.
    """
    if int(n_hours) < 1:
        raise ValueError(f"n_hours={n_hours!r} is invalid: expected an integer >= 1")
    if float(min_los_hours) < 0:
        raise ValueError(f"min_los_hours={min_los_hours!r} is invalid: expected a number >= 0")
    sql_path = Path(sql) if sql is not None else DEFAULT_SQL
    if not sql_path.is_file():
        raise FileNotFoundError(
            f"cohort SQL not found at {sql_path}; pass sql= the path to scripts/01_build_cohort.sql"
        )
    text = sql_path.read_text()
    con.execute(f"SET VARIABLE min_age = {int(min_age)}")
    con.execute(f"SET VARIABLE min_los_hours = {float(min_los_hours)!r}")
    con.execute(f"SET VARIABLE n_hours = {int(n_hours)}")
    con.execute(f"SET VARIABLE all_stays = {'true' if all_stays else 'false'}")
    con.execute(text)
    _require_columns(con, "cohort", COHORT_COLUMNS, sql_path)
    _require_columns(con, "observations", OBSERVATION_COLUMNS, sql_path)
    return hashlib.sha256(text.encode()).hexdigest()


def _require_columns(
    con: duckdb.DuckDBPyConnection, table: str, required: tuple[str, ...], source: Path
) -> None:
    present = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    missing = [c for c in required if c not in present]
    if missing:
        raise DataValidationError(
            f"{source}: table '{table}' lacks column(s) {missing}; columns present: {present}"
        )


def mapped_variables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The variables the SQL maps or emits, checked against ``variables.py``, in its order.

    An unknown name raises :class:`DataValidationError` naming it and listing the known ones.
    """
    rows = con.execute(
        "SELECT DISTINCT variable FROM itemid_map UNION SELECT DISTINCT variable FROM observations"
    ).fetchall()
    names = sorted(str(r[0]) for r in rows)
    lookup(names, key="itemid_map.variable")
    return [v for v in VARIABLES if v in names]


def observations_to_dataset(
    con: duckdb.DuckDBPyConnection,
    *,
    n_hours: int = 48,
    aggregate: str = "mean",
    name: str = "mimiciv",
) -> tuple[ClinicalDataset, dict[str, int]]:
    """The SQL's ``cohort`` and ``observations`` as a dataset, and the out-of-range counts.

    Values outside a variable's plausible range become missing before the hourly aggregation
    (``mean`` of the hour's values, or the ``last`` by charttime). Stays are ordered by stay_id.
    Shapes: x and mask (N, n_hours, F) for the F mapped variables; static_num (N, 1) = Age;
    static_cat (N, 3) = Gender, AdmissionType, ICUUnit.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r} is invalid: expected one of {list(AGGREGATES)}")
    variables = mapped_variables(con)
    registry = lookup(variables)
    con.register(
        "variable_grid",
        pa.table(
            {
                "variable": variables,
                "var_idx": np.arange(len(variables), dtype=np.int32),
                "low": [float(v.low) for v in registry],
                "high": [float(v.high) for v in registry],
            }
        ),
    )
    rows = con.execute(
        f"SELECT {', '.join(COHORT_COLUMNS)} FROM cohort ORDER BY stay_id"
    ).fetchall()
    cohort = {c: [r[k] for r in rows] for k, c in enumerate(COHORT_COLUMNS)}
    n = len(rows)
    if n == 0:
        flow = con.execute("SELECT * FROM cohort_flow ORDER BY step").fetchall()
        raise DataValidationError(f"no ICU stay meets the cohort criteria; cohort flow: {flow}")

    out_of_range = dict(
        con.execute(
            """
            SELECT o.variable, count(*)::BIGINT
            FROM observations AS o JOIN variable_grid AS g USING (variable)
            WHERE o.value IS NULL OR isnan(o.value) OR o.value < g.low OR o.value > g.high
            GROUP BY o.variable ORDER BY o.variable
            """
        ).fetchall()
    )
    # Sorted so that the hourly aggregation below sees every hour's values in one fixed order:
    # the dataset (and its digest) does not depend on DuckDB's thread count.
    obs = con.execute(
        """
        WITH stay_index AS (
            SELECT stay_id, (row_number() OVER (ORDER BY stay_id) - 1)::BIGINT AS row_idx
            FROM cohort
        )
        SELECT s.row_idx, o.hour::BIGINT AS hour, g.var_idx::BIGINT AS var_idx,
               o.value::DOUBLE AS value
        FROM observations AS o
        JOIN stay_index AS s USING (stay_id)
        JOIN variable_grid AS g USING (variable)
        WHERE NOT isnan(o.value) AND o.value BETWEEN g.low AND g.high
          AND o.hour >= 0 AND o.hour < ?
        ORDER BY s.row_idx, o.hour, g.var_idx, o.charttime, o.value
        """,
        [int(n_hours)],
    ).fetchnumpy()
    con.unregister("variable_grid")

    f = len(variables)
    x = np.full((n, n_hours, f), np.nan, dtype=np.float32)
    mask = np.zeros((n, n_hours, f), dtype=bool)
    flat = (np.asarray(obs["row_idx"]) * n_hours + np.asarray(obs["hour"])) * f + np.asarray(
        obs["var_idx"]
    )
    values = np.asarray(obs["value"], dtype=np.float64)
    if flat.size:
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        if aggregate == "mean":
            counts = np.diff(np.r_[starts, flat.size])
            hourly = np.add.reduceat(values, starts) / counts
        else:
            hourly = values[np.r_[starts[1:], flat.size] - 1]
        x.reshape(-1)[flat[starts]] = hourly.astype(np.float32)
        mask.reshape(-1)[flat[starts]] = True

    static_num = np.array(
        [[np.nan if v is None else float(v) for v in cohort[c]] for c in STATIC_NUMERIC.values()],
        dtype=np.float32,
    ).T.reshape(n, len(STATIC_NUMERIC))
    codes, levels = [], []
    for col in STATIC_CATEGORICAL.values():
        c, lv = _encode(cohort[col])
        codes.append(c)
        levels.append(lv)
    ds = ClinicalDataset(
        name=name,
        x=x,
        mask=mask,
        static_num=static_num,
        static_cat=np.stack(codes, axis=1).astype(np.int64),
        y=np.asarray(cohort["label"], dtype=np.int64),
        stay_id=np.asarray(cohort["stay_id"], dtype=np.int64),
        patient_id=np.asarray(cohort["subject_id"], dtype=np.int64),
        variables=variables,
        units=[v.unit for v in registry],
        static_num_names=list(STATIC_NUMERIC),
        static_cat_names=list(STATIC_CATEGORICAL),
        static_cat_levels=levels,
        class_names=["survived", "died"],
    )
    return ds, {k: int(v) for k, v in out_of_range.items()}


def _encode(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Codes into the sorted distinct non-empty strings; -1 where missing."""
    strings = [None if v is None or str(v) == "" else str(v) for v in values]
    levels = sorted({s for s in strings if s is not None})
    index = {s: k for k, s in enumerate(levels)}
    return np.asarray([-1 if s is None else index[s] for s in strings], dtype=np.int64), levels


def build_cohort(
    mimic_dir: str | Path,
    out_path: str | Path,
    *,
    min_age: int = 18,
    min_los_hours: float = 48.0,
    n_hours: int = 48,
    all_stays: bool = False,
    aggregate: str = "mean",
    sql: str | Path | None = None,
    name: str = "mimiciv",
    duckdb_config: dict[str, Any] | None = None,
) -> CohortBuild:
    """Build the MIMIC-IV cohort from the files in ``mimic_dir`` and write it to ``out_path``.

    ``duckdb_config`` goes to :func:`duckdb.connect` (e.g. ``{"threads": 8, "memory_limit":
    "16GB", "temp_directory": "/scratch/duckdb"}``); the result does not depend on it.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r} is invalid: expected one of {list(AGGREGATES)}")
    parameters = {
        "min_age": int(min_age),
        "min_los_hours": float(min_los_hours),
        "n_hours": int(n_hours),
        "all_stays": bool(all_stays),
        "aggregate": aggregate,
    }
    con = duckdb.connect(config=dict(duckdb_config or {}))
    try:
        tables = attach_tables(con, mimic_dir)
        sql_sha = run_cohort_sql(
            con,
            sql,
            min_age=min_age,
            min_los_hours=min_los_hours,
            n_hours=n_hours,
            all_stays=all_stays,
        )
        ds, out_of_range = observations_to_dataset(
            con, n_hours=n_hours, aggregate=aggregate, name=name
        )
        flow = [
            {"step": int(step), "criterion": str(criterion), "n_stays": int(count)}
            for step, criterion, count in con.execute(
                "SELECT step, criterion, n_stays FROM cohort_flow ORDER BY step"
            ).fetchall()
        ]
    finally:
        con.close()
    path = write_parquet(ds, out_path)
    log.info(
        "MIMIC-IV cohort: %d stays, %d died; %d out-of-range values dropped; written to %s",
        ds.n_stays,
        int(ds.y.sum()),
        sum(out_of_range.values()),
        path,
    )
    return CohortBuild(
        dataset=ds,
        path=path,
        cohort_flow=flow,
        out_of_range=out_of_range,
        parameters=parameters,
        sql_sha256=sql_sha,
        tables=tables,
    )
