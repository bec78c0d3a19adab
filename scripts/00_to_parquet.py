#!/usr/bin/env python
"""Build the MIMIC-IV cohort from a local copy and write it in the canonical Parquet layout.

    python scripts/00_to_parquet.py /data/mimiciv/2.2 data/mimiciv.parquet
    python -m backdoor_study.train data=parquet data.path=data/mimiciv.parquet

Runs scripts/01_build_cohort.sql with DuckDB over ``<mimic_dir>/hosp`` and ``<mimic_dir>/icu``
(CSV, CSV.gz or Parquet) and writes ``<out>`` plus ``<out>.build.json`` (cohort flow, parameters,
hashes; no patient-level data). The logic lives in backdoor_study.data.mimiciv; see
docs/data_mimiciv.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backdoor_study.data.mimiciv import AGGREGATES, DEFAULT_SQL, build_cohort
from backdoor_study.utils import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mimic_dir", type=Path, help="folder holding hosp/ and icu/ of MIMIC-IV v2.x")
    p.add_argument("out", type=Path, help="output Parquet file (canonical layout)")
    p.add_argument("--min-age", type=int, default=18, help="minimum age at admission (default 18)")
    p.add_argument(
        "--min-los-hours", type=float, default=48.0, help="minimum ICU stay in hours (default 48)"
    )
    p.add_argument(
        "--n-hours", type=int, default=48, help="hours of the observation grid (default 48)"
    )
    p.add_argument(
        "--all-stays",
        action="store_true",
        help="keep every ICU stay of an admission, not only the first",
    )
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="per-hour aggregate")
    p.add_argument(
        "--sql", type=Path, default=DEFAULT_SQL, help="cohort SQL (default: %(default)s)"
    )
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    p.add_argument("--memory-limit", default=None, help="DuckDB memory limit, e.g. 16GB")
    p.add_argument("--temp-directory", default=None, help="where DuckDB may spill to disk")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = {
        key: value
        for key, value in (
            ("threads", args.threads),
            ("memory_limit", args.memory_limit),
            ("temp_directory", args.temp_directory),
        )
        if value is not None
    }
    build = build_cohort(
        args.mimic_dir,
        args.out,
        min_age=args.min_age,
        min_los_hours=args.min_los_hours,
        n_hours=args.n_hours,
        all_stays=args.all_stays,
        aggregate=args.aggregate,
        sql=args.sql,
        duckdb_config=config,
    )
    summary = build.summary()
    write_json(args.out.with_name(args.out.name + ".build.json"), summary)
    print(
        json.dumps({k: summary[k] for k in ("path", "n_stays", "n_died", "cohort_flow")}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
