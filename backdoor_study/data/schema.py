"""The one canonical in-memory form of a clinical cohort, and its Parquet layout.

Every data source (synthetic, PhysioNet 2012, MIMIC-IV, sklearn tables, a user's Parquet file)
produces a :class:`ClinicalDataset`. Everything downstream (splits, poisoning, preprocessing,
models) reads only this form. This module owns validation and the content digest; it must not
know about any particular source.

Layout, per stay ``i``:

- ``x[i]``: (T, F) float32 time grid in the variable's own clinical units, NaN where unobserved.
- ``mask[i]``: (T, F) bool, True where a measurement fell in that hour.
- ``static_num[i]``: (S,) float32 numeric statics (age, weight, ...), NaN where unknown.
- ``static_cat[i]``: (C,) int64 codes into ``static_cat_levels[c]``, -1 where unknown.
- ``y[i]``: int64 class label; ``stay_id[i]`` a stable int64 id; ``patient_id[i]`` the patient
  the stay belongs to (splits never put one patient in two splits).

Static-only tables (iris, breast cancer) have ``T == 0`` and ``F == 0``.

Parquet layout: one row per stay with columns ``stay_id`` (int64), ``patient_id`` (int64),
``label`` (int64), one ``fixed_size_list<float32>[T]`` column per time-series variable (null =
unobserved), one float column per numeric static and one string column per categorical static.
The roles of the columns, the units and the class names travel in the schema metadata under the
key ``backdoor_study``, so a file is self-describing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backdoor_study.utils import atomic_write_bytes

METADATA_KEY = b"backdoor_study"
RESERVED_COLUMNS = ("stay_id", "patient_id", "label")
ARRAY_FIELDS = ("x", "mask", "static_num", "static_cat", "y", "stay_id", "patient_id")
META_FIELDS = ("variables", "units", "static_num_names", "static_cat_names", "static_cat_levels", "class_names")
LAYOUT_VERSION = 1


class DataValidationError(ValueError):
    """A dataset (in memory or on disk) does not match the canonical schema."""


@dataclass
class ClinicalDataset:
    """A cohort in canonical form. Arrays are aligned on their first axis (stays)."""

    name: str
    x: np.ndarray
    mask: np.ndarray
    static_num: np.ndarray
    static_cat: np.ndarray
    y: np.ndarray
    stay_id: np.ndarray
    patient_id: np.ndarray
    variables: list[str]
    units: list[str]
    static_num_names: list[str] = field(default_factory=list)
    static_cat_names: list[str] = field(default_factory=list)
    static_cat_levels: list[list[str]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["survived", "died"])

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_stays(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[2])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_time_series(self) -> bool:
        return self.n_steps > 0 and self.n_features > 0

    def variable_index(self, names: Sequence[str], key: str = "variables") -> list[int]:
        """Column indices of time-series variables; unknown names raise with the valid ones."""
        unknown = [n for n in names if n not in self.variables]
        if unknown:
            raise DataValidationError(
                f"{key}: unknown variable(s) {unknown} for dataset '{self.name}'; "
                f"valid variables are {self.variables}"
            )
        return [self.variables.index(n) for n in names]

    def subset(self, indices: np.ndarray, name: str | None = None) -> ClinicalDataset:
        """The stays at ``indices`` (a copy), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return self._with_arrays({a: getattr(self, a)[idx] for a in ARRAY_FIELDS}, name or self.name)

    @classmethod
    def concat(cls, datasets: Sequence[ClinicalDataset], name: str) -> ClinicalDataset:
        """The stays of several datasets with the same variables and statics, in the given order."""
        first = datasets[0]
        for ds in datasets[1:]:
            for attr in META_FIELDS:
                if getattr(ds, attr) != getattr(first, attr):
                    raise DataValidationError(f"cannot concatenate '{first.name}' and '{ds.name}': {attr} differ")
        arrays = {a: np.concatenate([getattr(ds, a) for ds in datasets]) for a in ARRAY_FIELDS}
        return first._with_arrays(arrays, name)

    def _with_arrays(self, arrays: dict[str, np.ndarray], name: str) -> ClinicalDataset:
        """A dataset with these arrays and a copy of this one's names and levels."""
        meta = {a: [list(v) for v in getattr(self, a)] if a == "static_cat_levels" else list(getattr(self, a)) for a in META_FIELDS}
        return ClinicalDataset(name=name, **arrays, **meta)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`DataValidationError` naming the first thing that is wrong."""
        n = self.y.shape[0] if self.y.ndim >= 1 else -1
        _check(self.y.ndim == 1, f"label y must be 1-D, got shape {self.y.shape}")
        _check(
            np.issubdtype(self.y.dtype, np.integer), f"label y must be integer, got {self.y.dtype}"
        )
        _check(n > 0, f"dataset '{self.name}' has no stays")
        _check(self.x.ndim == 3, f"x must be (N, T, F), got shape {self.x.shape}")
        _check(self.x.dtype == np.float32, f"x must be float32, got {self.x.dtype}")
        _check(
            self.mask.shape == self.x.shape,
            f"mask shape {self.mask.shape} != x shape {self.x.shape}",
        )
        _check(self.mask.dtype == np.bool_, f"mask must be bool, got {self.mask.dtype}")
        for arr_name in ("x", "mask", "static_num", "static_cat", "stay_id", "patient_id"):
            arr = getattr(self, arr_name)
            _check(arr.shape[0] == n, f"{arr_name} has {arr.shape[0]} rows but y has {n}")
        _check(
            len(self.variables) == self.x.shape[2],
            f"{len(self.variables)} variable names for {self.x.shape[2]} features",
        )
        _check(len(self.units) == len(self.variables), "one unit per variable is required")
        names = [*self.variables, *self.static_num_names, *self.static_cat_names]
        clash = sorted(
            {n for n in names if names.count(n) > 1} | (set(names) & set(RESERVED_COLUMNS))
        )
        _check(
            not clash,
            f"column name(s) {clash} used twice (variables, statics and {list(RESERVED_COLUMNS)} share one namespace)",
        )
        _check(
            self.static_num.ndim == 2 and self.static_num.shape[1] == len(self.static_num_names),
            f"static_num shape {self.static_num.shape} does not match names {self.static_num_names}",
        )
        _check(
            self.static_num.dtype == np.float32,
            f"static_num must be float32, got {self.static_num.dtype}",
        )
        _check(
            self.static_cat.ndim == 2 and self.static_cat.shape[1] == len(self.static_cat_names),
            f"static_cat shape {self.static_cat.shape} does not match names {self.static_cat_names}",
        )
        _check(
            self.static_cat.dtype == np.int64,
            f"static_cat must be int64, got {self.static_cat.dtype}",
        )
        _check(
            len(self.static_cat_levels) == len(self.static_cat_names),
            "one list of levels per categorical static is required",
        )
        for j, levels in enumerate(self.static_cat_levels):
            col = self.static_cat[:, j]
            _check(
                col.size == 0 or (col.min() >= -1 and col.max() < len(levels)),
                f"categorical static '{self.static_cat_names[j]}' has codes outside its {len(levels)} levels",
            )
        _check(
            self.y.min() >= 0 and self.y.max() < self.n_classes,
            f"labels must lie in [0, {self.n_classes}) for classes {self.class_names}; "
            f"got range [{self.y.min()}, {self.y.max()}]",
        )
        _check(np.unique(self.stay_id).size == n, f"stay_id values in '{self.name}' are not unique")
        observed_nan = np.isnan(self.x) & self.mask
        _check(not observed_nan.any(), "x is NaN in a cell the mask marks as observed")

    # ------------------------------------------------------------------ digest
    def digest(self) -> str:
        """sha256 over every array and every name: two datasets share it only if identical."""
        h = hashlib.sha256()
        meta = {
            "layout": LAYOUT_VERSION,
            "variables": self.variables,
            "units": self.units,
            "static_num_names": self.static_num_names,
            "static_cat_names": self.static_cat_names,
            "static_cat_levels": self.static_cat_levels,
            "class_names": self.class_names,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        for arr in (
            self.x,
            self.mask,
            self.static_num,
            self.static_cat,
            self.y,
            self.stay_id,
            self.patient_id,
        ):
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DataValidationError(message)


# ---------------------------------------------------------------------- Parquet I/O
def to_table(ds: ClinicalDataset) -> pa.Table:
    """The dataset as an Arrow table in the canonical Parquet layout (see module docstring)."""
    n, t, f = ds.x.shape
    columns: dict[str, pa.Array] = {
        "stay_id": pa.array(ds.stay_id.astype(np.int64)),
        "patient_id": pa.array(ds.patient_id.astype(np.int64)),
        "label": pa.array(ds.y.astype(np.int64)),
    }
    list_type = pa.list_(pa.float32(), t)
    for j, var in enumerate(ds.variables):
        values = pa.array(
            ds.x[:, :, j].reshape(-1), type=pa.float32(), mask=~ds.mask[:, :, j].reshape(-1)
        )
        columns[var] = pa.FixedSizeListArray.from_arrays(values, type=list_type)
    for j, name in enumerate(ds.static_num_names):
        col = ds.static_num[:, j]
        columns[name] = pa.array(col, type=pa.float32(), mask=np.isnan(col))
    for j, name in enumerate(ds.static_cat_names):
        codes = ds.static_cat[:, j]
        levels = np.asarray(ds.static_cat_levels[j], dtype=object)
        strings = np.where(
            codes >= 0, levels[np.clip(codes, 0, None)] if len(levels) else None, None
        )
        columns[name] = pa.array(strings.tolist(), type=pa.string())
    meta = {
        "layout": LAYOUT_VERSION,
        "name": ds.name,
        "n_steps": t,
        "variables": ds.variables,
        "units": ds.units,
        "static_numeric": ds.static_num_names,
        "static_categorical": ds.static_cat_names,
        "static_categorical_levels": ds.static_cat_levels,
        "class_names": ds.class_names,
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})


def write_parquet(ds: ClinicalDataset, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a reader never sees a half-written file."""
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(ds), sink, compression="zstd")
    # a unique temp file per writer: two processes writing the same path never share one
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet(path: str | Path, name: str | None = None) -> ClinicalDataset:
    """Read a canonical Parquet file, with errors that name the missing or malformed column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Parquet file at {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:  # truncated, not Parquet, unreadable
        raise DataValidationError(
            f"{path} is not a readable Parquet file ({' '.join(str(e).split())}); it may be "
            "truncated or of another format: rebuild it (scripts/00_to_parquet.py or "
            "backdoor_study.data.schema.write_parquet)"
        ) from None
    return from_table(table, name=name, source=str(path))


def from_table(table: pa.Table, name: str | None = None, source: str = "table") -> ClinicalDataset:
    raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw_meta is None:
        raise DataValidationError(
            f"{source}: no '{METADATA_KEY.decode()}' schema metadata; write it with "
            "backdoor_study.data.schema.write_parquet (or scripts/00_to_parquet.py)"
        )
    meta = json.loads(raw_meta)
    variables: list[str] = list(meta["variables"])
    t = int(meta["n_steps"])
    static_num_names = list(meta.get("static_numeric", []))
    static_cat_names = list(meta.get("static_categorical", []))
    required = ["stay_id", "patient_id", "label", *variables, *static_num_names, *static_cat_names]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {missing}; columns present: {table.column_names}"
        )
    n = table.num_rows

    def col(name: str) -> pa.ChunkedArray:
        return table.column(name)

    for c in ("stay_id", "patient_id", "label"):
        typ = col(c).type
        if not pa.types.is_integer(typ):
            raise DataValidationError(f"{source}: column '{c}' must be integer, got {typ}")
    if col("label").null_count:
        raise DataValidationError(
            f"{source}: column 'label' has {col('label').null_count} null/NaN label(s)"
        )

    x = np.full((n, t, len(variables)), np.nan, dtype=np.float32)
    mask = np.zeros((n, t, len(variables)), dtype=bool)
    for j, var in enumerate(variables):
        arr = col(var).combine_chunks()
        if not (
            pa.types.is_fixed_size_list(arr.type)
            and arr.type.list_size == t
            and pa.types.is_floating(arr.type.value_type)
        ):
            raise DataValidationError(
                f"{source}: column '{var}' must be fixed_size_list<float>[{t}], got {arr.type}"
            )
        if arr.null_count:
            raise DataValidationError(
                f"{source}: column '{var}' has null rows; use null elements instead"
            )
        values = arr.values
        if len(values) != n * t:
            raise DataValidationError(
                f"{source}: column '{var}' has {len(values)} values for {n} rows of {t} steps"
            )
        observed = values.is_valid().to_numpy(zero_copy_only=False)
        vals = values.to_numpy(zero_copy_only=False).astype(np.float32)
        observed &= ~np.isnan(vals)
        x[:, :, j] = np.where(observed, vals, np.nan).reshape(n, t)
        mask[:, :, j] = observed.reshape(n, t)

    static_num = np.empty((n, len(static_num_names)), dtype=np.float32)
    for j, c in enumerate(static_num_names):
        typ = col(c).type
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            raise DataValidationError(f"{source}: numeric static '{c}' must be numeric, got {typ}")
        static_num[:, j] = col(c).to_numpy().astype(np.float32)

    levels_meta = meta.get("static_categorical_levels")
    static_cat = np.empty((n, len(static_cat_names)), dtype=np.int64)
    static_cat_levels: list[list[str]] = []
    for j, c in enumerate(static_cat_names):
        typ = col(c).type
        if not (
            pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ)
        ):
            raise DataValidationError(
                f"{source}: categorical static '{c}' must be string, got {typ}"
            )
        values = np.asarray(col(c).to_pylist(), dtype=object)
        present = sorted({v for v in values if v is not None})
        levels = list(levels_meta[j]) if levels_meta else present
        unknown = sorted(set(present) - set(levels))
        if unknown:
            raise DataValidationError(
                f"{source}: categorical static '{c}' has values {unknown} not in levels {levels}"
            )
        lookup = {v: k for k, v in enumerate(levels)}
        static_cat[:, j] = [lookup.get(v, -1) if v is not None else -1 for v in values]
        static_cat_levels.append(levels)

    return ClinicalDataset(
        name=name or meta.get("name", Path(source).stem),
        x=x,
        mask=mask,
        static_num=static_num,
        static_cat=static_cat,
        y=col("label").to_numpy().astype(np.int64),
        stay_id=col("stay_id").to_numpy().astype(np.int64),
        patient_id=col("patient_id").to_numpy().astype(np.int64),
        variables=variables,
        units=list(meta["units"]),
        static_num_names=static_num_names,
        static_cat_names=static_cat_names,
        static_cat_levels=static_cat_levels,
        class_names=list(meta.get("class_names", ["survived", "died"])),
    )
