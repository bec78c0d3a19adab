"""All four models on PhysioNet 2012, trained on set A and reported on set B (external validation).

    python benchmarks/physionet_models.py                 # 4 models x 3 seeds, 20 epochs
    python benchmarks/physionet_models.py --seeds 1 --models mlp

Trains (or reuses) one run per model and seed with ``data=physionet2012 data.test_sets=[b]`` and
writes mean ± standard deviation of the set-B metrics to docs/results_physionet.md. The reference
measured in the same run is logistic regression on per-variable summaries (scripts/logreg_reference.py),
with its C chosen by cross-validation on set A only. Nothing here is tuned on set B.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backdoor_study.study import aggregate, run_grid
from backdoor_study.utils import atomic_write_text, read_json

METRICS = ["auroc_clean", "auprc_clean", "ece_clean", "best_val_auroc"]
REPO = Path(__file__).resolve().parent.parent


def logreg_reference() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.json"
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "logreg_reference.py"), "--json", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return read_json(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["mlp", "lstm", "tcn", "tabtransformer"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--runs-root", default="runs/physionet_ab_v2")
    p.add_argument("--out", default="docs/results_physionet.md")
    args = p.parse_args()
    logging.getLogger("backdoor_study").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    cells = [
        (
            {"model": m, "seed": s},
            [
                f"model={m}",
                f"seed={s}",
                "data=physionet2012",
                "data.test_sets=[b]",
                f"epochs={args.epochs}",
                f"runs_root={args.runs_root}",
                "trainer.progress=false",
            ],
        )
        for m, s in itertools.product(args.models, args.seeds)
    ]
    table = run_grid(cells)
    agg = aggregate(table, ["model"], METRICS).sort_values("auroc_clean_mean", ascending=False)
    ref = logreg_reference()
    best = agg.iloc[0]
    lines = [
        "# PhysioNet 2012: trained on set A, reported on set B",
        "",
        f"Produced by `python benchmarks/physionet_models.py` ({args.epochs} epochs, best epoch by validation "
        f"AUROC on a split of set A, seeds {args.seeds}; mean ± standard deviation over seeds). "
        "Set B is only reported on.",
        "",
        "| model | AUROC (set B) | AUPRC (set B) | ECE (set B) | best validation AUROC (set A) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        lines.append(
            f"| {r['model']} | {r['auroc_clean_mean']:.3f} ± {r['auroc_clean_std']:.3f} | "
            f"{r['auprc_clean_mean']:.3f} ± {r['auprc_clean_std']:.3f} | {r['ece_clean_mean']:.3f} ± "
            f"{r['ece_clean_std']:.3f} | {r['best_val_auroc_mean']:.3f} ± {r['best_val_auroc_std']:.3f} |"
        )
    lines += [
        "",
        "Reference, measured in the same run: logistic regression on per-variable summaries + statics "
        f"(`scripts/logreg_reference.py`, C={ref['c_chosen_on_a']:g} chosen by cross-validation on set A): "
        f"AUROC {ref['auroc_a_to_b']:.3f}, AUPRC {ref['auprc_a_to_b']:.3f} on set B "
        f"(nested CV AUROC on set A {ref['cv_auroc_a_mean']:.3f}).",
        "",
        f"Best model: {best['model']}, AUROC {best['auroc_clean_mean']:.3f}: "
        f"{best['auroc_clean_mean'] - ref['auroc_a_to_b']:+.3f} against the reference "
        f"(ratio {best['auroc_clean_mean'] / ref['auroc_a_to_b']:.3f}).",
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))
    print(f"{len(table)} runs in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
