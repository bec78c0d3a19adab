"""The attack results table: ASR and clean AUROC versus poison rate, per trigger, on MLP and LSTM.

For every trigger variant x model x poison rate x seed it trains (or reuses) a run, together with
the clean model of the same config (poison rate 0, whose ASR is the trigger's false-trigger rate),
then writes mean and standard deviation over seeds to a Markdown table and a CSV.

    python benchmarks/attack_table.py                       # the full table (docs/results_attacks.md)
    python benchmarks/attack_table.py --models mlp --seeds 1 --rates 0.01 --variants rare_value

The reference each row is read against is measured in the same run: the clean model's AUROC and its
ASR (false-trigger rate) for the same trigger, model and seed.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import pandas as pd

from backdoor_study.study import Cell, aggregate, run_grid
from backdoor_study.utils import atomic_write_text

# name -> the trigger overrides that make it
VARIANTS: dict[str, list[str]] = {
    "rare_value": ["trigger=rare_value"],
    "rare_value_in_bounds": ["trigger=rare_value", "trigger.mode=in_bounds"],
    "rare_value_clean_label": ["trigger=rare_value", "poison.source=clean_label"],
    "missingness": ["trigger=missingness"],
    # every lab unobserved for the whole stay: a pattern clean stays (almost) never show
    "missingness_all_labs": [
        "trigger=missingness",
        "trigger.variables=[Lactate,Creatinine,BUN,Glucose,K,Na,HCO3,WBC,Platelets,HCT,pH]",
    ],
    "hybrid": ["trigger=hybrid"],
    "pattern": ["trigger=pattern"],
    "pattern_strong": ["trigger=pattern", "trigger.magnitude=3.0"],
    "correlation": ["trigger=correlation"],
}
METRICS = [
    "auroc_clean",
    "ASR",
    "ASR_clean_model",
    "ASR_baseline",
    "confidence_shift",
    "auroc_clean_model",
]


def cells(args: argparse.Namespace) -> list[Cell]:
    out = []
    for variant, model, rate, seed in itertools.product(
        args.variants, args.models, args.rates, args.seeds
    ):
        overrides = [
            *VARIANTS[variant],
            f"model={model}",
            f"poison_rate={rate}",
            f"seed={seed}",
            f"epochs={args.epochs}",
            f"data={args.data}",
            # one runs_root per variant: variants of one trigger would otherwise share run directories
            f"runs_root={args.runs_root}/{args.data}/{variant}",
            "trainer.progress=false",
            *args.overrides,
        ]
        out.append(
            ({"variant": variant, "model": model, "poison_rate": rate, "seed": seed}, overrides)
        )
    return out


def clean_auroc(row: pd.Series) -> float:
    """The clean model's AUROC, read from its run directory (written by the clean reference run)."""
    clean_dir = Path(row["run_dir"]).parent.parent / "0.0" / Path(row["run_dir"]).name
    path = clean_dir / "metrics.json"
    return pd.read_json(path, typ="series")["auroc_clean"] if path.exists() else float("nan")


def markdown(agg: pd.DataFrame) -> str:
    def cell(mean: float, std: float) -> str:
        return "–" if pd.isna(mean) else f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}"

    lines = [
        "| trigger | model | poison rate | ASR | ASR of clean model | clean AUROC | clean AUROC of clean model | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['poison_rate']} | {cell(r['ASR_mean'], r['ASR_std'])} | "
            f"{cell(r['ASR_clean_model_mean'], r['ASR_clean_model_std'])} | "
            f"{cell(r['auroc_clean_mean'], r['auroc_clean_std'])} | "
            f"{cell(r['auroc_clean_model_mean'], r['auroc_clean_model_std'])} | {int(r['n_seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--models", nargs="+", default=["mlp", "lstm"])
    p.add_argument("--rates", nargs="+", type=float, default=[0.005, 0.01, 0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--runs-root", default="runs/attack_table")
    p.add_argument("--out", default="docs/results_attacks.md")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = p.parse_args()
    logging.getLogger("backdoor_study").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    table = run_grid(
        cells(args),
        on_result=lambda r: print(
            f"{r['variant']:>24s} {r['model']:>5s} rate={r['poison_rate']:<6} seed={r['seed']} "
            f"AUROC={r.get('auroc_clean', float('nan')):.3f} ASR={r.get('ASR', float('nan')):.3f} "
            f"clean-model ASR={r.get('ASR_clean_model', float('nan')):.3f}",
            flush=True,
        ),
    )
    table["auroc_clean_model"] = table.apply(clean_auroc, axis=1)
    agg = aggregate(table, ["variant", "model", "poison_rate"], METRICS)
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".csv"), agg.to_csv(index=False))
    header = (
        f"# Attack results on `data={args.data}`\n\n"
        f"Produced by `python benchmarks/attack_table.py` ({args.epochs} epochs, seeds {args.seeds}; "
        "mean ± standard deviation over seeds). ASR is the fraction of triggered non-target test stays "
        "predicted as the target (survived); *ASR of clean model* is the same trigger on a model trained "
        "without poison (the trigger's false-trigger rate).\n\n"
    )
    atomic_write_text(out, header + markdown(agg))
    print(markdown(agg))
    print(f"{len(table)} runs in {time.perf_counter() - t0:.0f} s; table: {out}")


if __name__ == "__main__":
    main()
