"""The HTML dashboard of a runs tree (a thin wrapper over ``python -m backdoor_study.report``).

    python scripts/visualization_dashboard.py --runs_root runs/demo

Summarizes the runs tree, then writes figures, statistics and {runs_root}/report/index.html, one
self-contained page to open in any browser (no network access needed).
"""

from __future__ import annotations

import argparse

from backdoor_study import report
from backdoor_study.study import compose_config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs_root", required=True, help="the runs tree (e.g. runs/demo)")
    parser.add_argument("--out_dir", default=None, help="default: {runs_root}/report")
    args = parser.parse_args()
    overrides = [f"runs_root={args.runs_root}"]
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    page = report.run(compose_config("report", overrides))
    print(f"report: {page.resolve()}")


if __name__ == "__main__":
    main()
