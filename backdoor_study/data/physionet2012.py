"""``data=physionet2012``: the PhysioNet/CinC Challenge 2012 files -> one :class:`ClinicalDataset`.

Reads the files exactly as the challenge distributes them (``set-{s}.tar.gz`` with one
``set-{s}/RECORDID.txt`` per stay holding ``Time,Parameter,Value`` rows, and ``Outcomes-{s}.txt``)
from a directory the user names (``data.root`` / ``$BACKDOOR_STUDY_PHYSIONET_DIR``). This module
owns the parsing, the hourly resampling and the per-set Parquet cache; it must not split,
impute or scale (that is ``splits.py`` and ``preprocess.py``).

Resampling onto the ``n_steps``-hour grid: hour = minutes since admission // 60, and times at or
beyond ``n_steps`` hours fall into the last step. Within an hour the last value wins, except
``Urine``, which is summed. ``-1`` means missing for every parameter. The six general descriptors
(RecordID, Age, Gender, Height, ICUType, Weight) are the first of each at ``00:00``; the
admission Weight becomes the static ``AdmissionWeight``, later Weight rows form the time-varying ``Weight`` series.

Parsing is one vectorised pass: the archive is decompressed once, every record's rows are joined
into one buffer, parsed by pandas' C reader and scattered into the grid with numpy indexing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from backdoor_study.config import PHYSIONET_SETS
from backdoor_study.data import LoadedData, register_source
from backdoor_study.data.schema import (
    ClinicalDataset,
    DataValidationError,
    read_parquet,
    write_parquet,
)
from backdoor_study.data.variables import units_for
from backdoor_study.utils import sha256_file

__all__ = [
    "CLASS_NAMES",
    "DESCRIPTORS",
    "PHYSIONET_URL",
    "STATIC_CATEGORICAL",
    "STATIC_NUMERIC",
    "TIME_SERIES_VARIABLES",
    "cache_key",
    "cache_path",
    "default_root",
    "load",
    "load_set",
    "parse_records",
    "parse_set",
    "read_tar_members",
    "set_files",
]

log = logging.getLogger(__name__)

PHYSIONET_URL = "https://physionet.org/content/challenge-2012/1.0.0/"
ROOT_ENV = "BACKDOOR_STUDY_PHYSIONET_DIR"
# Bump when the parsed result would change for the same files: old caches are then never read.
PARSER_VERSION = 1

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
# The challenge's 37 time-series parameters (Weight included), in the order of variables.py.
TIME_SERIES_VARIABLES = (
    "HR", "SysABP", "DiasABP", "MAP", "NISysABP", "NIDiasABP", "NIMAP", "RespRate", "Temp",
    "SaO2", "GCS", "Urine", "FiO2", "MechVent", "Weight", "Lactate", "Creatinine", "BUN",
    "Glucose", "K", "Na", "HCO3", "HCT", "WBC", "Platelets", "pH", "PaCO2", "PaO2", "Mg",
    "Bilirubin", "Albumin", "ALP", "ALT", "AST", "Cholesterol", "TroponinI", "TroponinT",
)  # fmt: skip
SUMMED_VARIABLES = ("Urine",)  # amounts per hour: summed, not "last value"
# Static name -> descriptor. The admission Weight needs its own name: "Weight" is the time series,
# and the Parquet layout has one column per name.
STATIC_NUMERIC = {"Age": "Age", "Height": "Height", "AdmissionWeight": "Weight"}
STATIC_CATEGORICAL = ("Gender", "ICUType")
# Raw descriptor value -> (code, level). Gender 0 = female, 1 = male; ICUType 1..4.
GENDER_LEVELS = ["female", "male"]
# Coronary Care Unit, Cardiac Surgery Recovery Unit, Medical ICU, Surgical ICU.
ICU_TYPE_LEVELS = ["CCU", "CSRU", "MICU", "SICU"]
_CATEGORY_CODES = {
    "Gender": ({0.0: 0, 1.0: 1}, GENDER_LEVELS),
    "ICUType": ({1.0: 0, 2.0: 1, 3.0: 2, 4.0: 3}, ICU_TYPE_LEVELS),
}
CLASS_NAMES = ["survived", "died"]
LABEL_COLUMN = "In-hospital_death"
HEADER = b"Time,Parameter,Value"
MISSING_VALUE = -1.0


# ---------------------------------------------------------------------------- files
def default_root() -> Path:
    """``$BACKDOOR_STUDY_PHYSIONET_DIR``, else ``../shared/data/physionet2012`` (the config default,
    relative to the working directory), for scripts that run without a composed config."""
    return Path(os.environ.get(ROOT_ENV, "../shared/data/physionet2012")).expanduser()


def set_files(root: str | Path, set_name: str) -> tuple[Path, Path]:
    """The archive and outcomes file of one set: ``(set-{s}.tar.gz, Outcomes-{s}.txt)``."""
    root = Path(root)
    return root / f"set-{set_name}.tar.gz", root / f"Outcomes-{set_name}.txt"


def _check_files(root: Path, sets: Sequence[str], root_key: str = "data.root") -> None:
    """Raise FileNotFoundError naming every missing file, where we looked and how to fix it."""
    how = (
        f"Set {root_key}=/path/to/dir (or the environment variable {ROOT_ENV}) to the directory "
        "holding set-a.tar.gz, Outcomes-a.txt, set-b.tar.gz and Outcomes-b.txt, as downloaded from "
        f"the PhysioNet/CinC Challenge 2012 page ({PHYSIONET_URL}); do not unpack the archives."
    )
    if not root.is_dir():
        raise FileNotFoundError(
            f"PhysioNet 2012 directory not found: {root_key}={str(root)!r} "
            f"(resolved to {root.resolve()}) does not exist. {how}"
        )
    missing = [p.name for s in sets for p in set_files(root, s) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"PhysioNet 2012 file(s) {missing} not found in {root.resolve()} "
            f"({root_key}={str(root)!r}). {how}"
        )


def read_tar_members(tar_path: str | Path) -> list[tuple[str, bytes]]:
    """Every regular file in the archive as ``(member name, bytes)``, decompressed in one call.

    Decompressing the whole archive into memory first is ~1.5x faster than tarfile's streaming
    gzip mode for thousands of small members.
    """
    raw = Path(tar_path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]  # type: ignore[union-attr]
    except tarfile.TarError as e:
        raise DataValidationError(f"{tar_path}: not a readable tar archive ({e})") from e


# ---------------------------------------------------------------------------- parsing
def _record_bodies(
    members: Iterable[tuple[str, bytes]], source: str
) -> tuple[np.ndarray, list[bytes]]:
    """Record ids (sorted) and each record's data rows (header removed, newline-terminated)."""
    records: dict[int, bytes] = {}
    for name, data in members:
        file_name = PurePosixPath(name).name
        if not file_name.endswith(".txt"):
            continue
        stem = file_name[: -len(".txt")]
        if not stem.isdigit():
            raise DataValidationError(f"{source}: member {name!r} is not named RECORDID.txt")
        header, _, body = data.replace(b"\r", b"").partition(b"\n")
        if header.strip() != HEADER:
            raise DataValidationError(
                f"{source}: member {name!r} starts with {header[:60]!r}, expected {HEADER.decode()!r}"
            )
        if b"\n\n" in body or body.startswith(b"\n"):  # blank lines would break the row count
            body = b"\n".join(line for line in body.split(b"\n") if line.strip())
        if body and not body.endswith(b"\n"):
            body += b"\n"
        record_id = int(stem)
        if record_id in records:
            raise DataValidationError(f"{source}: record {record_id} appears twice")
        records[record_id] = body
    if not records:
        raise DataValidationError(f"{source}: no RECORDID.txt members found")
    ids = np.array(sorted(records), dtype=np.int64)
    return ids, [records[int(i)] for i in ids]


def _parse_rows(bodies: list[bytes], source: str) -> tuple[np.ndarray, pd.DataFrame]:
    """All rows of all records in one pandas pass: (record index per row, hh/mm/param/value)."""
    counts = np.array([b.count(b"\n") for b in bodies], dtype=np.int64)
    # "HH:MM" -> two integer columns: the C reader then parses times as fast as numbers.
    blob = b"".join(bodies).replace(b":", b",")
    columns = ["hh", "mm", "param", "value"]
    if not blob:  # headers only: the C reader refuses empty input
        empty = {"hh": np.zeros(0, np.int64), "mm": np.zeros(0, np.int64), "value": np.zeros(0)}
        return np.zeros(0, np.int64), pd.DataFrame({**empty, "param": pd.Categorical([])})[columns]
    try:
        rows = pd.read_csv(
            io.BytesIO(blob),
            header=None,
            names=columns,
            dtype={"hh": np.int64, "mm": np.int64, "param": "category", "value": np.float64},
            engine="c",
            skip_blank_lines=False,
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise DataValidationError(f"{source}: malformed Time,Parameter,Value row(s): {e}") from e
    if len(rows) != counts.sum():
        raise DataValidationError(f"{source}: parsed {len(rows)} rows, expected {counts.sum()}")
    record_index = np.repeat(np.arange(len(bodies)), counts)
    return record_index, rows


def parse_records(
    members: Iterable[tuple[str, bytes]],
    outcomes: pd.DataFrame,
    n_steps: int = 48,
    name: str = "physionet2012",
    source: str = "records",
) -> ClinicalDataset:
    """Records (``(member name, file bytes)``) plus their outcomes -> a canonical dataset.

    ``outcomes`` needs the columns ``RecordID`` and ``In-hospital_death``; every record needs an
    outcome and every outcome a record. Stays come out sorted by RecordID. Raises
    :class:`DataValidationError` naming an unknown Parameter, a malformed row or a mismatch.
    """
    if n_steps < 1:
        raise DataValidationError(f"data.n_steps={n_steps} is invalid: expected an integer >= 1")
    ids, bodies = _record_bodies(members, source)
    record_index, rows = _parse_rows(bodies, source)
    n, t, f = len(ids), n_steps, len(TIME_SERIES_VARIABLES)

    params = rows["param"].cat
    names = [str(c) for c in params.categories]
    unknown = sorted(set(names) - set(TIME_SERIES_VARIABLES) - set(DESCRIPTORS))
    if unknown:
        codes = params.codes.to_numpy()
        bad = np.isin(codes, [names.index(u) for u in unknown])
        where = sorted({int(ids[i]) for i in record_index[bad]})[:5]
        raise DataValidationError(
            f"{source}: unknown Parameter name(s) {unknown} (in record(s) {where}); known "
            f"parameters are {sorted(DESCRIPTORS)} and {sorted(TIME_SERIES_VARIABLES)}"
        )
    codes = params.codes.to_numpy().astype(np.int64)
    ts_of_code = np.array(
        [TIME_SERIES_VARIABLES.index(c) if c in TIME_SERIES_VARIABLES else -1 for c in names]
    )
    desc_of_code = np.array([DESCRIPTORS.index(c) if c in DESCRIPTORS else -1 for c in names])
    ts_col = ts_of_code[codes] if len(names) else np.zeros(0, dtype=np.int64)
    desc_col = desc_of_code[codes] if len(names) else np.zeros(0, dtype=np.int64)
    minutes = rows["hh"].to_numpy() * 60 + rows["mm"].to_numpy()
    if (minutes < 0).any():
        first = int(np.flatnonzero(minutes < 0)[0])
        raise DataValidationError(f"{source}: negative time in record {ids[record_index[first]]}")
    value = rows["value"].to_numpy()
    if np.isnan(value).any():
        first = int(np.flatnonzero(np.isnan(value))[0])
        raise DataValidationError(
            f"{source}: empty or non-numeric Value in record {ids[record_index[first]]}"
        )

    # Descriptors: the first row of each at 00:00 (files interleave them with 00:00 measurements).
    descriptor_rows = np.flatnonzero((desc_col >= 0) & (minutes == 0))
    key = record_index[descriptor_rows] * len(DESCRIPTORS) + desc_col[descriptor_rows]
    _, first = np.unique(key, return_index=True)
    chosen = descriptor_rows[first]
    desc = np.full((n, len(DESCRIPTORS)), np.nan)
    desc[record_index[chosen], desc_col[chosen]] = value[chosen]
    desc[desc == MISSING_VALUE] = np.nan
    rid = desc[:, DESCRIPTORS.index("RecordID")]
    wrong = ~np.isnan(rid) & (rid != ids)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise DataValidationError(f"{source}: file {ids[i]}.txt says RecordID {rid[i]:.0f}")

    # Time series: every measurement row except the admission-Weight descriptor and -1s.
    is_descriptor = np.zeros(len(rows), dtype=bool)
    is_descriptor[chosen] = True
    keep = (ts_col >= 0) & ~is_descriptor & (value != MISSING_VALUE)
    stay, var, mins, val = record_index[keep], ts_col[keep], minutes[keep], value[keep]
    hour = np.minimum(mins // 60, t - 1)
    cell = (stay * t + hour) * f + var
    x = np.full(n * t * f, np.nan, dtype=np.float32)
    mask = np.zeros(n * t * f, dtype=bool)
    mask[cell] = True
    order = np.lexsort((mins, cell))  # stable: ties in time keep file order
    cell_sorted = cell[order]
    is_last = np.ones(cell_sorted.size, dtype=bool)
    is_last[:-1] = cell_sorted[1:] != cell_sorted[:-1]
    x[cell_sorted[is_last]] = val[order][is_last]
    summed = np.isin(var, [TIME_SERIES_VARIABLES.index(v) for v in SUMMED_VARIABLES])
    if summed.any():
        cells, inverse = np.unique(cell[summed], return_inverse=True)
        x[cells] = np.bincount(inverse, weights=val[summed])

    static_num = desc[:, [DESCRIPTORS.index(c) for c in STATIC_NUMERIC.values()]].astype(np.float32)
    static_cat = np.stack(
        [
            _category_codes(desc[:, DESCRIPTORS.index(c)], c, ids, source)
            for c in STATIC_CATEGORICAL
        ],
        axis=1,
    )
    return ClinicalDataset(
        name=name,
        x=x.reshape(n, t, f),
        mask=mask.reshape(n, t, f),
        static_num=static_num,
        static_cat=static_cat,
        y=_labels(outcomes, ids, source),
        stay_id=ids.copy(),
        patient_id=ids.copy(),  # the challenge gives no patient ids: one stay per patient
        variables=list(TIME_SERIES_VARIABLES),
        units=units_for(TIME_SERIES_VARIABLES),
        static_num_names=list(STATIC_NUMERIC),
        static_cat_names=list(STATIC_CATEGORICAL),
        static_cat_levels=[list(_CATEGORY_CODES[c][1]) for c in STATIC_CATEGORICAL],
        class_names=list(CLASS_NAMES),
    )


def _category_codes(raw: np.ndarray, name: str, ids: np.ndarray, source: str) -> np.ndarray:
    mapping, levels = _CATEGORY_CODES[name]
    codes = np.full(raw.shape, -1, dtype=np.int64)
    for raw_value, code in mapping.items():
        codes[raw == raw_value] = code
    bad = ~np.isnan(raw) & (codes == -1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{source}: record {ids[i]} has {name}={raw[i]:g}; valid values are "
            f"{ {int(k): v for k, v in zip(mapping, levels)} } or -1 (unknown)"
        )
    return codes


def _labels(outcomes: pd.DataFrame, ids: np.ndarray, source: str) -> np.ndarray:
    missing_cols = [c for c in ("RecordID", LABEL_COLUMN) if c not in outcomes.columns]
    if missing_cols:
        raise DataValidationError(
            f"{source}: outcomes lack column(s) {missing_cols}; columns present: {list(outcomes.columns)}"
        )
    table = outcomes.set_index("RecordID")[LABEL_COLUMN]
    no_outcome = np.setdiff1d(ids, table.index.to_numpy())
    no_record = np.setdiff1d(table.index.to_numpy(), ids)
    if no_outcome.size or no_record.size:
        raise DataValidationError(
            f"{source}: records and outcomes do not match: {no_outcome.size} record(s) without an "
            f"outcome (e.g. {no_outcome[:5].tolist()}), {no_record.size} outcome(s) without a record "
            f"(e.g. {no_record[:5].tolist()}); are the archive and outcomes file from the same set?"
        )
    y = table.loc[ids].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise DataValidationError(
            f"{source}: {LABEL_COLUMN} must be 0 or 1, got {sorted(set(y.tolist()))}"
        )
    return y.astype(np.int64)


def parse_set(
    tar_path: str | Path, outcomes_path: str | Path, n_steps: int = 48, name: str | None = None
) -> ClinicalDataset:
    """Parse one set from its files (no cache). ~1 s for the 4,000 stays of set A."""
    tar_path, outcomes_path = Path(tar_path), Path(outcomes_path)
    outcomes = pd.read_csv(outcomes_path)
    return parse_records(
        read_tar_members(tar_path),
        outcomes,
        n_steps=n_steps,
        name=name or tar_path.name.removesuffix(".tar.gz"),
        source=str(tar_path),
    )


# ---------------------------------------------------------------------------- cache
def cache_key(file_sha256: dict[str, str], n_steps: int) -> str:
    """First 16 hex of sha256 over the source files' sha256 (plus the grid length and parser
    version, which also change the parsed result)."""
    material = {"files": file_sha256, "n_steps": n_steps, "parser": PARSER_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, set_name: str, key: str) -> Path:
    """``{cache_dir}/physionet2012_set-{s}_{key}.parquet``."""
    return Path(cache_dir) / f"physionet2012_set-{set_name}_{key}.parquet"


def load_set(
    root: str | Path, set_name: str, n_steps: int = 48, cache_dir: str | Path | None = None
) -> tuple[ClinicalDataset, dict[str, Any]]:
    """One set, from the Parquet cache when a cache for exactly these files exists.

    Returns the dataset and its provenance: each file's path and sha256, and the cache file.
    ``cache_dir=None`` parses every time and writes nothing.
    """
    root = Path(root)
    _check_files(root, [set_name])
    tar_path, outcomes_path = set_files(root, set_name)
    files = {p.name: sha256_file(p) for p in (tar_path, outcomes_path)}
    info: dict[str, Any] = {
        "files": {
            p.name: {"path": str(p.resolve()), "sha256": files[p.name]}
            for p in (tar_path, outcomes_path)
        },
        "cache": None,
    }
    name = f"physionet2012_set-{set_name}"
    if cache_dir is None:
        return parse_set(tar_path, outcomes_path, n_steps=n_steps, name=name), info
    path = cache_path(cache_dir, set_name, cache_key(files, n_steps))
    info["cache"] = str(path)
    if path.exists():
        try:
            return read_parquet(path, name=name), info
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable PhysioNet cache %s (%s); re-parsing", path, e)
    ds = parse_set(tar_path, outcomes_path, n_steps=n_steps, name=name)
    write_parquet(ds, path)
    return ds, info


# ---------------------------------------------------------------------------- loader
@register_source("physionet2012")
def load(data_cfg: Any) -> LoadedData:
    """``train_sets`` then ``test_sets`` as one dataset; ``external_test`` marks the test sets'
    stays (None when ``test_sets`` is empty: the test split is then drawn internally)."""
    train_sets, test_sets = list(data_cfg.train_sets), list(data_cfg.test_sets)
    for key, sets in (("data.train_sets", train_sets), ("data.test_sets", test_sets)):
        bad = [s for s in sets if s not in PHYSIONET_SETS]
        if bad:
            raise DataValidationError(
                f"{key}={sets!r} names unknown set(s) {bad}; valid sets are {list(PHYSIONET_SETS)}"
            )
    root = Path(str(data_cfg.root)).expanduser()
    cache_dir = getattr(data_cfg, "cache_dir", None) or None
    n_steps = int(data_cfg.n_steps)
    _check_files(root, train_sets + test_sets)  # every missing file named before any parsing

    parts, files, caches = [], {}, {}
    for s in train_sets + test_sets:
        ds, info = load_set(root, s, n_steps=n_steps, cache_dir=cache_dir)
        parts.append(ds)
        files.update(info["files"])
        caches[s] = info["cache"]
    dataset = ClinicalDataset.concat(parts, name="physionet2012")
    external_test = None
    if test_sets:
        external_test = np.concatenate(
            [np.full(ds.n_stays, s in test_sets) for s, ds in zip(train_sets + test_sets, parts)]
        )
    source = {
        "name": "physionet2012",
        "root": str(root.resolve()),
        "train_sets": train_sets,
        "test_sets": test_sets,
        "n_steps": n_steps,
        "files": files,
        "cache": caches,
    }
    return LoadedData(dataset=dataset, external_test=external_test, source=source)
