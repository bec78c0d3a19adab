"""The detection results table: can each detector find the poison, and does removing it undo the
backdoor? Every detector x model x trigger x poison rate x seed, on saved run directories.

For each cell it trains (or reuses) the poisoned run and its clean model (study.run_grid, as the
attack table does), runs ``detect`` with every detector on the run directory, and ``sanitize``
with the chosen detector(s); then writes mean ± standard deviation over seeds to a Markdown table
and CSVs. Everything is skipped when already complete, so an interrupted grid resumes.

    python benchmarks/detection_table.py                      # the full grid (> 1 h of CPU)
    python benchmarks/detection_table.py --models mlp lstm --variants rare_value --rates 0.05 0.01
    python benchmarks/detection_table.py --detectors spectre --sanitize spectre --seeds 1

The full grid: every detector x MLP / LSTM / TCN / TabTransformer x rare_value /
rare_value_strong (the trigger that implants at 1%) / hybrid at 1% and 5%, plus ``pattern_noreg`` (the pattern trigger, 3 std, in the recipe where it implants: no weight
decay or dropout, 30 epochs, last epoch; docs/attack_findings.md), 3 seeds.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backdoor_study import detect, rundir, sanitize
from backdoor_study.config import DETECTOR_SCHEMAS, validate
from backdoor_study.study import Cell, aggregate, compose_config, run_grid
from backdoor_study.utils import atomic_write_text, read_json

# name -> the train overrides that make it (per model where the recipe names model keys)
VARIANTS: dict[str, list[str]] = {
    "rare_value": ["trigger=rare_value"],
    "rare_value_strong": ["trigger=rare_value_strong"],
    "hybrid": ["trigger=hybrid"],
    "pattern_noreg": [
        "trigger=pattern",
        "trigger.magnitude=3.0",
        "optimizer.weight_decay=0.0",
        "epochs=30",
        "trainer.selection=last",
    ],
}
NO_DROPOUT = {
    "mlp": ["model.dropout=0.0"],
    "lstm": ["model.dropout=0.0"],
    "tcn": ["model.dropout=0.0"],
    "tabtransformer": ["model.attn_dropout=0.0", "model.ff_dropout=0.0"],
}
DETECTION_METRICS = [
    "auroc",
    "auprc",
    "recall",
    "precision",
    "tpr_at_fpr_0.01",
    "tpr_at_fpr_0.05",
    "flagged_fraction",
    "wall_s",
]
SANITIZE_METRICS = [
    "ASR_before",
    "ASR_after",
    "ASR_flip_before",
    "ASR_flip_after",
    "auroc_clean_before",
    "auroc_clean_after",
    "ASR_clean_model",
    "auroc_clean_model",
    "n_poisoned_excluded",
    "n_excluded",
]


def cells(args: argparse.Namespace) -> list[Cell]:
    out = []
    for variant, model, rate, seed in itertools.product(
        args.variants, args.models, args.rates, args.seeds
    ):
        recipe = VARIANTS[variant] + (NO_DROPOUT[model] if variant == "pattern_noreg" else [])
        epochs = [] if any(o.startswith("epochs=") for o in recipe) else [f"epochs={args.epochs}"]
        overrides = [
            f"model={model}",
            f"poison_rate={rate}",
            f"seed={seed}",
            *epochs,
            f"data={args.data}",
            *recipe,
            f"runs_root={args.runs_root}/{args.data}/{variant}",
            "trainer.progress=false",
            *args.overrides,
        ]
        out.append(
            ({"variant": variant, "model": model, "poison_rate": rate, "seed": seed}, overrides)
        )
    return out


def detect_row(
    run: pd.Series, detector: str, load: Callable[[], Any], extra: list[str] = ()
) -> dict[str, Any]:
    cfg = compose_config(
        "detect", [f"run_dir={run['run_dir']}", f"detector={detector}", "progress=false", *extra]
    )
    validate(cfg)
    m = detect.detect_run(cfg, Path(run["run_dir"]), load=load)
    return {
        **{k: run[k] for k in ("variant", "model", "poison_rate", "seed")},
        "detector": detector,
        **{k: m.get(k) for k in DETECTION_METRICS},
        "auroc_target": m.get("auroc_target"),
    }


def sanitize_row(run: pd.Series, detector: str, extra: list[str] = ()) -> dict[str, Any]:
    cfg = compose_config(
        "sanitize",
        [f"run_dir={run['run_dir']}", f"detector={detector}", "progress=false", *extra],
    )
    r = sanitize.run(cfg)
    return retrain_row(run, detector, r["n_excluded"], r["n_poisoned_excluded"], r)


def retrain_row(
    run: pd.Series, detector: str, n_excluded: int, n_poisoned_excluded: int, r: dict[str, Any]
) -> dict[str, Any]:
    """One sanitize-table row: the cell, what was excluded, and ``r``'s ``before`` / ``after`` /
    ``clean_model`` metrics (as ``sanitize.json`` holds them)."""
    row = {
        **{k: run[k] for k in ("variant", "model", "poison_rate", "seed")},
        "detector": detector,
        "n_excluded": n_excluded,
        "n_poisoned_excluded": n_poisoned_excluded,
        "ASR_clean_model": r["clean_model"]["ASR"],
        "auroc_clean_model": r["clean_model"]["auroc_clean"],
    }
    for when in ("before", "after"):
        for key in ("ASR", "ASR_flip", "auroc_clean"):
            row[f"{key}_{when}"] = r[when].get(key, float("nan"))
    return row


ORACLE = "oracle"


def oracle_row(run: pd.Series) -> dict[str, Any]:
    """The best any removal can do: retrain without exactly the poisoned stays (the run's own
    poisoned_indices.npy as the exclusion, through sanitize's hook) into sanitized/oracle/."""
    from backdoor_study import train

    run_dir = Path(run["run_dir"])
    cfg = compose_config("sanitize", [f"run_dir={run_dir}", "progress=false"])
    poisoned_file = run_dir / rundir.POISONED_INDICES_FILE
    poisoned = np.load(poisoned_file)
    out = run_dir / sanitize.SANITIZED_DIR / ORACLE
    train_cfg = sanitize.sanitized_config(cfg, run_dir, out, poisoned_file, poisoned)
    train_cfg.sanitize.detector = ORACLE  # no detector: the truth
    after = train.run(train_cfg)
    before = read_json(run_dir / rundir.METRICS_FILE)
    r = {
        "before": before,
        "after": after,
        "clean_model": sanitize.clean_model_summary(run_dir, before),
    }
    return retrain_row(run, ORACLE, int(poisoned.size), int(poisoned.size), r)


def _cell(mean: float, std: float) -> str:
    return "–" if pd.isna(mean) else f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}"


def detection_markdown(agg: pd.DataFrame) -> str:
    lines = [
        "| trigger | model | poison rate | detector | detection AUROC | recall at budget | precision | TPR at 1% FPR | TPR at 5% FPR | flagged | seconds | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['poison_rate']} | {r['detector']} | "
            f"{_cell(r['auroc_mean'], r['auroc_std'])} | {_cell(r['recall_mean'], r['recall_std'])} | "
            f"{_cell(r['precision_mean'], r['precision_std'])} | "
            f"{_cell(r['tpr_at_fpr_0.01_mean'], r['tpr_at_fpr_0.01_std'])} | "
            f"{_cell(r['tpr_at_fpr_0.05_mean'], r['tpr_at_fpr_0.05_std'])} | "
            f"{_cell(r['flagged_fraction_mean'], r['flagged_fraction_std'])} | "
            f"{r['wall_s_mean']:.1f} | {int(r['n_seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def sanitize_markdown(agg: pd.DataFrame) -> str:
    lines = [
        "| trigger | model | poison rate | detector | ASR before | ASR after | ASR of clean model | ASR_flip before | ASR_flip after | clean AUROC before | clean AUROC after | clean AUROC of clean model | poisoned removed / flagged | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        c = [
            _cell(r[f"{k}_mean"], r[f"{k}_std"])
            for k in (
                "ASR_before",
                "ASR_after",
                "ASR_clean_model",
                "ASR_flip_before",
                "ASR_flip_after",
                "auroc_clean_before",
                "auroc_clean_after",
                "auroc_clean_model",
            )
        ]
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['poison_rate']} | {r['detector']} | "
            + " | ".join(c)
            + f" | {r['n_poisoned_excluded_mean']:.1f} / {r['n_excluded_mean']:.1f} | {int(r['n_seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--models",
        nargs="+",
        default=list(NO_DROPOUT),
        choices=list(NO_DROPOUT),
    )
    p.add_argument("--rates", nargs="+", type=float, default=[0.01, 0.05])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument(
        "--detectors",
        nargs="+",
        default=list(DETECTOR_SCHEMAS),
        choices=list(DETECTOR_SCHEMAS),
    )
    p.add_argument(
        "--sanitize",
        nargs="*",
        default=["spectre"],
        choices=list(DETECTOR_SCHEMAS),
        help="detectors whose flagged stays are removed and the model retrained",
    )
    p.add_argument(
        "--flag-classes",
        nargs="+",
        type=int,
        help="flag (and remove) only stays of these classes, e.g. 0: detect/sanitize flag_classes",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="also retrain without exactly the poisoned stays: the ceiling of any removal",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--runs-root", default="runs/detection_table")
    p.add_argument("--out", default="docs/results_detection.md")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = p.parse_args()
    logging.getLogger("backdoor_study").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    runs = run_grid(
        cells(args),
        on_result=lambda r: print(
            f"trained {r['variant']:>13s} {r['model']:>14s} rate={r['poison_rate']:<5} seed={r['seed']} "
            f"ASR={r.get('ASR', float('nan')):.3f}",
            flush=True,
        ),
    )
    t_train = time.perf_counter() - t0
    extra = [f"flag_classes=[{','.join(map(str, args.flag_classes))}]"] if args.flag_classes else []
    detections, sanitized = [], []
    for _, run in runs.iterrows():
        # one rebuild of the run's data and model for all its detectors, only if one needs it
        load = functools.cache(lambda d=run["run_dir"]: rundir.load_run(d))
        for name in args.detectors:
            row = detect_row(run, name, load, extra)
            detections.append(row)
            print(
                f"detect {name:>22s} {run['variant']:>13s} {run['model']:>14s} "
                f"rate={run['poison_rate']:<5} seed={run['seed']} AUROC={row['auroc']:.3f} "
                f"recall={row['recall']:.3f} ({row['wall_s']:.1f} s)",
                flush=True,
            )
        if args.oracle and float(run["poison_rate"]) > 0:
            sanitized.append(oracle_row(run))
        for name in args.sanitize:
            row = sanitize_row(run, name, extra)
            sanitized.append(row)
            print(
                f"sanitize {name:>20s} {run['variant']:>13s} {run['model']:>14s} "
                f"rate={run['poison_rate']:<5} seed={run['seed']} ASR {row['ASR_before']:.3f} -> "
                f"{row['ASR_after']:.3f} (clean model {row['ASR_clean_model']:.3f})",
                flush=True,
            )
    keys = ["variant", "model", "poison_rate", "detector"]
    det_agg = aggregate(pd.DataFrame(detections), keys, DETECTION_METRICS)
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".csv"), det_agg.to_csv(index=False))
    text = (
        f"# Detection results on `data={args.data}`\n\n"
        f"Produced by `python benchmarks/detection_table.py {' '.join(_argv_slice(args))}` "
        f"({args.epochs} epochs unless the trigger's recipe says otherwise; seeds {args.seeds}; "
        "mean ± standard deviation over seeds). Detection AUROC ranks every training stay by the "
        "detector's score against the truth (`poisoned_indices.npy`); recall and precision are of "
        "the flagged set, at the flag budget `eps_multiplier` (1.5) x the run's poison rate per "
        "class; TPR at 1% / 5% FPR is the best recall any score threshold reaches at that false-positive "
        "rate; seconds are the detector's own time (features + scoring) on the training split."
        + (
            f" Flags (and removals) only in class(es) {args.flag_classes} (`flag_classes`); "
            "the scores and AUROC are those of every stay."
            if args.flag_classes
            else ""
        )
        + "\n\n## Detection\n\n"
        + detection_markdown(det_agg)
    )
    if sanitized:
        san_agg = aggregate(pd.DataFrame(sanitized), keys, SANITIZE_METRICS)
        atomic_write_text(out.with_name(out.stem + "_sanitize.csv"), san_agg.to_csv(index=False))
        text += (
            "\n## Sanitize: retrained without the flagged stays\n\n"
            "ASR and clean AUROC of the poisoned model (before) and of the same config retrained "
            "without the flagged training stays (after), beside the clean model's (the same config "
            "at poison rate 0: its ASR is the trigger's false-trigger rate)."
            + (
                " `oracle` retrains without exactly the poisoned stays: the best any removal "
                "can do (dirty-label poison is taken from the deaths, so removing it also "
                "removes most of the training deaths at 5%)."
                if args.oracle
                else ""
            )
            + "\n\n"
            + sanitize_markdown(san_agg)
        )
    atomic_write_text(out, text)
    print(text)
    print(
        f"{len(runs)} runs ({t_train:.0f} s training), {len(detections)} detections, "
        f"{len(sanitized)} sanitized retrains in {time.perf_counter() - t0:.0f} s; table: {out}"
    )


def _argv_slice(args: argparse.Namespace) -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
