"""Statistics over seeds from a study's summary table (a thin wrapper over backdoor_study.stats).

    python scripts/stat_analysis.py --summary runs/demo/summary.csv [--out runs/demo/report]

Mean, SD and 95% bootstrap CI per config; each poisoned config against its clean baseline, paired
by seed (t-test and Wilcoxon, Holm-corrected per metric), with effect sizes. Writes stats.csv and
stats.md under --out and prints the Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backdoor_study import report, stats, summarize


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
    parser.add_argument(
        "--ci", type=float, default=0.95, help="confidence level of the bootstrap CIs"
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (Holm)")
    parser.add_argument("--n-resamples", type=int, default=9999, help="bootstrap resamples")
    args = parser.parse_args()
    summary = summarize.read_summary(args.summary)
    out = Path(args.out) if args.out else Path(args.summary).parent / "report"
    table = report.write_stats(
        summary, out, ci=args.ci, n_resamples=args.n_resamples, alpha=args.alpha
    )
    print(stats.markdown_table(table))
    print(f"written: {out / 'stats.csv'}, {out / 'stats.md'}")


if __name__ == "__main__":
    main()
