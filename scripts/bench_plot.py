"""Figures of a study from its summary table (a thin wrapper over backdoor_study.report).

    python scripts/bench_plot.py --summary runs/demo/summary.csv [--out runs/demo/report]

Writes figures/*.png and *.svg (and the stats they draw their CIs from) under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backdoor_study import report, summarize


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--summary", required=True, help="summary.csv or summary.parquet (backdoor_study.summarize)"
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: report/ beside the summary)"
    )
    parser.add_argument("--asr-success", type=float, default=0.9, help="ASR a backdoor must reach")
    args = parser.parse_args()
    summary = summarize.read_summary(args.summary)
    out = Path(args.out) if args.out else Path(args.summary).parent / "report"
    stats = report.write_stats(summary, out)
    ctx = report.ReportContext(
        summary=summary, stats=stats, out_dir=out, asr_success=args.asr_success
    )
    report.build_sections(ctx)
    for name, path in ctx.figures.items():
        print(f"{name}: {path} (+ .svg)")


if __name__ == "__main__":
    main()
