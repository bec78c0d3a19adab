"""``python -m backdoor_study.summarize runs_root=...``: every run directory under a runs tree in one table.

Writes ``{runs_root}/summary.csv`` and ``{runs_root}/summary.parquet`` (atomically): one row per run
with its ``kind``, its config columns (model, trigger, attack, poison rate, seed, split seed, data,
selection, ...), its scalar metrics, ``run_dir`` and the MLflow run id where it was tracked.
Reports and statistics read this table; nothing here computes a metric.

A run is recognised by the file that marks it complete (:data:`MARKERS`):

- ``metrics.json`` (+ ``config_resolved.yaml``) -> ``train``; ``clean_reference`` when the directory
  is the ``clean_reference`` sub-directory train writes under an explicit ``run_dir``
- ``detect/{detector}/detection_metrics.json`` -> ``detect`` (config columns of the training run it
  scored, detection metrics prefixed ``detection_``)
- ``sanitized/{detector}/sanitize.json`` -> ``sanitize`` (config columns of the training run it
  cleaned; the retrained model's metrics, and sanitize's own ``before_*`` / ``after_*``)

Other run kinds (e.g. the classic scikit-learn study) add a reader with :func:`register_marker`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from backdoor_study import rundir
from backdoor_study.config import validate
from backdoor_study.utils import atomic_write_bytes, atomic_write_text, read_json

log = logging.getLogger("backdoor_study.summarize")

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
KINDS = (
    "train",
    "clean_reference",
    "detect",
    "sanitize",
    "classic",
    "classic_data_quantity",
    "classic_paradox",
)
# Directories under a runs root that hold no run (reports, MLflow stores, Hydra's own files).
SKIP_DIRS = {"report", rundir.TRACKING_ARTIFACTS_DIR, "mlruns", "__pycache__"}
# config column -> dotted key in a run's config_resolved.yaml
CONFIG_KEYS = {
    "data": "data.name",
    "model": "model.name",
    "attack": "attack.name",
    "trigger": "trigger.name",
    "target_label": "trigger.target_label",
    "poison_rate": "poison_rate",
    "poison_source": "poison.source",
    "seed": "seed",
    "split_seed": "data.split.seed",
    "data_subset": "data.subset",
    "dev_size": "data.dev_size",
    "epochs": "epochs",
    "selection": "trainer.selection",
    "threshold_rule": "metrics.threshold",
    "mitigation": "mitigation.name",  # the classic study (backdoor_study.classic)
}
# The classic study's run directories follow train's layout; run_metadata.json names the study.
CLASSIC_KINDS = {
    "single": "classic",
    "data_quantity_quality": "classic_data_quantity",
    "accuracy_paradox": "classic_paradox",
}
FIRST_COLUMNS = (
    "kind",
    *CONFIG_KEYS,
    "detector",
    "run_dir",
    "train_run_dir",
    "mlflow_run_id",
    "mlflow_tracking_uri",
)

Reader = Callable[[Path, Path], "dict[str, Any] | None"]
# marker file name -> reader(marker_path, runs_root) -> row (None: not a run of this kind)
MARKERS: dict[str, Reader] = {}


def register_marker(filename: str) -> Callable[[Reader], Reader]:
    """Register ``reader`` for run directories marked by ``filename`` (one reader per name)."""

    def deco(reader: Reader) -> Reader:
        if filename in MARKERS:
            raise ValueError(f"a reader for {filename!r} is already registered")
        MARKERS[filename] = reader
        return reader

    return deco


# --------------------------------------------------------------------------------------- readers
def config_columns(run_dir: Path) -> dict[str, Any]:
    """The config columns of a training run directory (from its ``config_resolved.yaml``)."""
    cfg = rundir.load_run_config(run_dir)
    return {col: OmegaConf.select(cfg, key, default=None) for col, key in CONFIG_KEYS.items()}


def mlflow_run(run_dir: Path) -> dict[str, str | None]:
    """The MLflow run id and tracking URI recorded in ``run_metadata.json`` (``mlflow.run_id`` /
    ``mlflow.tracking_uri``, as tracking writes them); None for an untracked run."""
    path = run_dir / rundir.METADATA_FILE
    recorded = read_json(path).get("mlflow") if path.exists() else None
    recorded = recorded if isinstance(recorded, dict) else {}
    return {
        "mlflow_run_id": recorded.get("run_id"),
        "mlflow_tracking_uri": recorded.get("tracking_uri"),
    }


def scalars(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar entries of a metrics dict (lists such as confusion matrices left out)."""
    return {
        f"{prefix}{k}": v
        for k, v in obj.items()
        if v is None or isinstance(v, (bool, int, float, str))
    }


@register_marker(rundir.METRICS_FILE)
def train_row(marker: Path, runs_root: Path) -> dict[str, Any] | None:
    run_dir = marker.parent
    if not (run_dir / rundir.RESOLVED_CONFIG_FILE).exists() or (run_dir / "sanitize.json").exists():
        return None
    kind = "clean_reference" if run_dir.name == "clean_reference" else "train"
    meta_path = run_dir / rundir.METADATA_FILE
    meta = read_json(meta_path) if meta_path.exists() else {}
    kind = CLASSIC_KINDS.get(meta.get("study"), kind)
    row = {"kind": kind, **config_columns(run_dir), "run_dir": str(run_dir)}
    row.update(mlflow_run(run_dir))
    if meta_path.exists():
        row["config_digest"] = meta.get("config_digest")
        row["data_digest"] = (meta.get("data") or {}).get("digest")
        row["total_s"] = (meta.get("timings") or {}).get("total_s")
    row.update(scalars(read_json(marker)))
    return row


def _stage_row(kind: str, marker: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A row for a stage run in ``{train_run_dir}/{stage}/{detector}/``. Metrics named like a
    config or bookkeeping column (``run_dir``, ``detector``, ``poison_rate``...) are left out:
    those come from the directories and the training run's config."""
    metrics = {k: v for k, v in metrics.items() if k not in FIRST_COLUMNS}
    stage_dir = marker.parent
    train_dir = stage_dir.parent.parent
    if not (train_dir / rundir.RESOLVED_CONFIG_FILE).exists():
        log.warning("%s: no training run above it (%s missing); left out", marker, train_dir)
        return None
    return {
        "kind": kind,
        **config_columns(train_dir),
        "detector": stage_dir.name,
        "run_dir": str(stage_dir),
        "train_run_dir": str(train_dir),
        **mlflow_run(stage_dir),
        **metrics,
    }


@register_marker("detection_metrics.json")
def detect_row(marker: Path, runs_root: Path) -> dict[str, Any] | None:
    metrics = {
        (k if k.startswith("detection_") else f"detection_{k}"): v
        for k, v in scalars(read_json(marker)).items()
        if k not in FIRST_COLUMNS  # the detector, run_dir, poison_rate... it repeats
    }
    return _stage_row("detect", marker, metrics)


@register_marker("sanitize.json")
def sanitize_row(marker: Path, runs_root: Path) -> dict[str, Any] | None:
    record = read_json(marker)
    metrics = scalars(record)
    retrained = marker.parent / rundir.METRICS_FILE  # the model retrained without the flagged stays
    if retrained.exists():
        metrics = {**scalars(read_json(retrained)), **metrics}
    for when in ("before", "after"):  # sanitize's own before/after comparison, when it has one
        if isinstance(record.get(when), dict):
            metrics.update(scalars(record[when], prefix=f"{when}_"))
    return _stage_row("sanitize", marker, metrics)


# --------------------------------------------------------------------------------------- collection
def find_markers(runs_root: Path) -> Iterator[Path]:
    """Every marker file under ``runs_root`` (sorted), outside :data:`SKIP_DIRS` and dot-dirs."""
    found = []
    for name in MARKERS:
        for path in runs_root.rglob(name):
            rel = path.relative_to(runs_root).parts[:-1]
            if any(p in SKIP_DIRS or p.startswith(".") for p in rel):
                continue
            found.append(path)
    return iter(sorted(found))


def collect(runs_root: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """One row per completed run under ``runs_root`` (see the module docstring)."""
    root = Path(runs_root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs_root={str(runs_root)!r}: no such directory")
    markers = list(find_markers(root))
    rows = []
    for marker in tqdm(markers, desc="summarize", unit="run", disable=not progress):
        row = MARKERS[marker.name](marker, root)
        if row is not None:
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = [c for c in FIRST_COLUMNS if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    sort = [
        c
        for c in ("kind", "data", "model", "trigger", "poison_rate", "detector", "seed")
        if c in table
    ]
    return table.sort_values(sort, na_position="first", kind="stable").reset_index(drop=True)


def write_summary(table: pd.DataFrame, runs_root: str | Path) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.parquet`` under ``runs_root``, each written atomically."""
    root = Path(runs_root)
    csv_path = atomic_write_text(root / SUMMARY_CSV, table.to_csv(index=False))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
    parquet_path = atomic_write_bytes(root / SUMMARY_PARQUET, sink.getvalue().to_pybytes())
    return csv_path, parquet_path


def run(cfg: DictConfig) -> pd.DataFrame:
    """Collect ``cfg.runs_root`` and write its summary; returns the table."""
    validate(cfg)
    table = collect(cfg.runs_root, progress=bool(cfg.get("progress", True)))
    if table.empty:
        raise FileNotFoundError(
            f"runs_root={cfg.runs_root!r} holds no completed run (looked for {', '.join(MARKERS)})"
        )
    write_summary(table, cfg.runs_root)
    return table


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary written by :func:`write_summary` (``.csv`` or ``.parquet``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"summary {str(path)!r}: no such file (run backdoor_study.summarize)"
        )
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"summary {str(path)!r}: expected a .csv or .parquet file")


def main(cfg: DictConfig) -> None:
    table = run(cfg)
    counts = table["kind"].value_counts().to_dict()
    root = Path(cfg.runs_root)
    print(
        f"{len(table)} runs ({', '.join(f'{n} {k}' for k, n in counts.items())}) -> "
        f"{root / SUMMARY_CSV}, {root / SUMMARY_PARQUET}"
    )


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("summarize", main)


if __name__ == "__main__":
    _main()
