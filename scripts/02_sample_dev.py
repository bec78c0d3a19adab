"""(Re)build the synthetic cohort's dev subset: data/dev/dev.parquet from data/main.parquet.

A thin wrapper around :func:`backdoor_study.data.synthetic.rebuild_dev_subset`: the subset is
deterministic for the cohort's seed (whole patients, stratified on the label); splits.json and
manifest.json are rewritten with it. Generate the cohort first, e.g. by loading data=synthetic.

    .venv/bin/python scripts/02_sample_dev.py [--data-dir data] [--dev-size 3000]
"""

from __future__ import annotations

import argparse
import os

from backdoor_study.data.synthetic import rebuild_dev_subset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("BACKDOOR_STUDY_DATA_DIR", "data"),
        help="the synthetic cohort's data.data_dir (default: $BACKDOOR_STUDY_DATA_DIR or data)",
    )
    parser.add_argument(
        "--dev-size",
        type=int,
        default=None,
        help="stays in the dev subset (default: the dev_size recorded in manifest.json)",
    )
    args = parser.parse_args(argv)
    manifest = rebuild_dev_subset(args.data_dir, dev_size=args.dev_size)
    dev = manifest["counts"]["dev"]
    print(
        f"wrote {args.data_dir}/{manifest['files']['dev']}: {dev['stays']} stays, "
        f"{dev['patients']} patients, {dev['deaths']} deaths (sha256 {manifest['digests']['dev']})"
    )


if __name__ == "__main__":
    main()
