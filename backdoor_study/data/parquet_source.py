"""``data=parquet``: any cohort already in the canonical Parquet layout (e.g. MIMIC-IV)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backdoor_study.data import LoadedData, register_source
from backdoor_study.data.schema import read_parquet
from backdoor_study.utils import sha256_file


@register_source("parquet")
def load(data_cfg: Any) -> LoadedData:
    path = Path(data_cfg.path)
    if not path.exists():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; build one with scripts/00_to_parquet.py "
            "(MIMIC-IV) or backdoor_study.data.schema.write_parquet"
        )
    ds = read_parquet(path)
    return LoadedData(dataset=ds, source={"path": str(path.resolve()), "sha256": sha256_file(path)})
