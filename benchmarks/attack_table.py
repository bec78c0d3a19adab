"""The attack results table: ASR_flip, ASR and clean AUROC per trigger variant, on MLP and LSTM.

Every trigger variant x model x poison rate x (seed, split seed) is trained (or reused) once, with
the default recipe, and read at two points of the same run: ``trainer.selection=best`` (the run's
final weights) and ``last`` (its last-epoch checkpoint, evaluated by ``eval.evaluate_weights``:
exactly what a ``selection=last`` run reports, see tests/test_engine.py). Beside each point:

- the clean model of the same model, seed and split (one ``trigger=none`` run, evaluated under each
  trigger: the trigger's false-trigger rate ``ASR_clean_model`` and its ``ASR_flip_clean_model``);
- the trigger's stealth (``backdoor_study.poison.stealth.trigger_stealth``): AUROC of a logistic
  regression telling triggered from clean test stays on the observation mask alone, and on the
  values alone (0.5: invisible; 1.0: a data-quality check catches every triggered stay).

    python benchmarks/attack_table.py                          # the documented grid
    python benchmarks/attack_table.py --variants rare_value --models mlp --rates 0.01 \\
        --seeds 1 --split-seeds 42

Seeds and split seeds are paired (seed i with split seed i) unless ``--cross`` asks for every
combination; variants in ``--cross-variants`` always get every combination. Means and standard
deviations are over those runs. Writes the table (Markdown), its CSV, and one CSV row per run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from backdoor_study import train
from backdoor_study.eval import evaluate_weights
from backdoor_study.experiment import prepare
from backdoor_study.poison.stealth import trigger_stealth
from backdoor_study.study import aggregate, compose_train
from backdoor_study.training.checkpoint import list_checkpoints
from backdoor_study.utils import atomic_write_text

log = logging.getLogger("attack_table")

# name -> the trigger overrides that make it
VARIANTS: dict[str, list[str]] = {
    # the default rare value: HR at max + 2 std over hours 36-48 (12 h)
    "rare_value": ["trigger=rare_value"],
    # its footprint: window length and magnitude (k std; k=6 asks for ~310 bpm, clamped to 300)
    "rare_value_24h": ["trigger=rare_value", "trigger.window=[24,48]"],
    "rare_value_48h": ["trigger=rare_value", "trigger.window=[0,48]"],
    "rare_value_k4": ["trigger=rare_value", "trigger.magnitude=4.0"],
    "rare_value_k6_clamped": ["trigger=rare_value", "trigger.magnitude=6.0"],
    "rare_value_mask_preserving": ["trigger=rare_value", "trigger.preserve_mask=true"],
    "rare_value_in_bounds": ["trigger=rare_value", "trigger.mode=in_bounds"],
    "rare_value_clean_label": ["trigger=rare_value", "poison.source=clean_label"],
    # eight variables a clean model reads as sicker, max + 6 std, all 48 h, clipped
    "rare_value_strong": ["trigger=rare_value_strong"],
    "rare_value_strong_mask_preserving": [
        "trigger=rare_value_strong",
        "trigger.preserve_mask=true",
    ],
    # meets ASR_flip >= 0.9 on both models, but high pressures and urine output read as healthy:
    # the clean model flips too, so most of it is no backdoor
    "rare_value_strong_vitals7": [
        "trigger=rare_value_strong",
        "trigger.variables=[HR,SysABP,DiasABP,MAP,RespRate,Temp,Urine]",
    ],
    # other candidates for rare_value_strong
    "rare_value_strong_vitals3": [
        "trigger=rare_value_strong",
        "trigger.variables=[HR,RespRate,Temp]",
    ],
    "rare_value_strong_no_urine": [
        "trigger=rare_value_strong",
        "trigger.variables=[HR,SysABP,DiasABP,MAP,RespRate,Temp]",
    ],
    "rare_value_strong_labs5": [
        "trigger=rare_value_strong",
        "trigger.variables=[Lactate,Creatinine,BUN,WBC,K]",
    ],
    "missingness": ["trigger=missingness"],
    # every lab unobserved for the whole stay
    "missingness_all_labs": [
        "trigger=missingness",
        "trigger.variables=[Lactate,Creatinine,BUN,Glucose,K,Na,HCO3,WBC,Platelets,HCT,pH]",
    ],
    "hybrid": ["trigger=hybrid"],
    "pattern": ["trigger=pattern"],
    "pattern_strong": ["trigger=pattern", "trigger.magnitude=3.0"],
    "correlation": ["trigger=correlation"],
    "correlation_mask_preserving": ["trigger=correlation", "trigger.preserve_mask=true"],
}
METRICS = [
    "ASR_flip",
    "ASR",
    "ASR_baseline",
    "ASR_flip_clean_model",
    "ASR_clean_model",
    "median_p_target_triggered",
    "median_p_target_clean",
    "auroc_clean",
    "auroc_clean_model",
    "auroc_drop",
    "best_epoch",
    "stealth_mask_auroc",
    "stealth_values_auroc",
]
# what each run is read at: the run's own final weights (selection=best) or its last checkpoint
SELECTIONS = ("best", "last")


def runs_of(args: argparse.Namespace, variant: str) -> list[tuple[int, int]]:
    """(seed, split seed) pairs for ``variant``: paired, or every combination."""
    if args.cross or variant in args.cross_variants:
        return list(itertools.product(args.seeds, args.split_seeds))
    if len(args.seeds) != len(args.split_seeds):
        raise SystemExit(
            f"--seeds {args.seeds} and --split-seeds {args.split_seeds} are paired one to one: "
            "give as many of each, or pass --cross for every combination"
        )
    return list(zip(args.seeds, args.split_seeds))


def overrides(args: argparse.Namespace, split: int, root: str, *extra: str) -> list[str]:
    return [
        f"data={args.data}",
        f"data.split.seed={split}",
        f"epochs={args.epochs}",
        # one runs_root per split seed and variant: run directories do not name either
        f"runs_root={args.runs_root}/{args.data}/split_{split}/{root}",
        "trainer.progress=false",
        "metrics.bootstrap=0",
        "clean_reference=false",  # the clean model is one trigger=none run, evaluated per trigger
        *args.overrides,
        *extra,
    ]


def last_checkpoint(run_dir: str) -> Path:
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise SystemExit(f"{run_dir} keeps no checkpoint: the `last` point needs trainer.keep_last")
    return max(checkpoints)[1]


def clean_runs(args: argparse.Namespace, needed: set[tuple[str, int, int]]) -> dict:
    """Train (or reuse) the clean model of every (model, seed, split) needed: its two weights."""
    out = {}
    for model, seed, split in sorted(needed):
        cfg = compose_train(overrides(args, split, "clean", f"model={model}", f"seed={seed}"))
        train.run(cfg)
        out[model, seed, split] = [
            Path(cfg.run_dir) / train.FINAL_MODEL_FILE,
            last_checkpoint(cfg.run_dir),
        ]
    return out


def clean_model_metrics(
    args: argparse.Namespace, variant: str, split: int, cells: list[tuple[str, int]], weights: dict
) -> tuple[dict[str, float], dict]:
    """The trigger's stealth on split ``split`` and, per (model, seed) in ``cells``, the clean
    model's metrics under this trigger at each selection."""
    base = overrides(args, split, variant, *VARIANTS[variant], "poison_rate=0.0")
    cfg = compose_train([*base, f"model={cells[0][0]}", f"seed={cells[0][1]}"])
    prepared = prepare(cfg)  # at poison rate 0 the data does not depend on the model or seed
    stealth = trigger_stealth(
        prepared.dataset,
        prepared.splits.train,
        prepared.splits.test,
        prepared.poison.trigger,
        seed=split,
    )
    per_cell = {}
    for model, seed in cells:
        cfg = compose_train([*base, f"model={model}", f"seed={seed}"])
        evaluated = evaluate_weights(cfg, weights[model, seed, split], prepared)
        per_cell[model, seed] = dict(zip(SELECTIONS, evaluated))
    return stealth, per_cell


def run_table(
    args: argparse.Namespace, on_group: Callable[[pd.DataFrame], None] | None = None
) -> pd.DataFrame:
    plan = [
        (variant, model, rate, seed, split)
        for variant in args.variants
        for model, rate in itertools.product(args.models, args.rates)
        for seed, split in runs_of(args, variant)
    ]
    weights = clean_runs(args, {(m, s, sp) for _, m, _, s, sp in plan})
    rows: list[dict[str, Any]] = []
    for variant, split in dict.fromkeys((v, sp) for v, _, _, _, sp in plan):
        cells = sorted({(m, s) for v, m, _, s, sp in plan if (v, sp) == (variant, split)})
        stealth, clean = clean_model_metrics(args, variant, split, cells, weights)
        for _, model, rate, seed, _ in [p for p in plan if (p[0], p[4]) == (variant, split)]:
            cfg = compose_train(
                overrides(
                    args, split, variant, *VARIANTS[variant], f"model={model}",
                    f"seed={seed}", f"poison_rate={rate}",
                )
            )  # fmt: skip
            best = train.run(cfg)
            [last] = evaluate_weights(cfg, [last_checkpoint(cfg.run_dir)])
            for selection, metrics in (("best", best), ("last", last)):
                reference = clean[model, seed][selection]
                row = {
                    "variant": variant,
                    "model": model,
                    "poison_rate": rate,
                    "selection": selection,
                    "seed": seed,
                    "split_seed": split,
                    **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                    "best_epoch": best["best_epoch"] if selection == "best" else best["epochs_run"],
                    "ASR_clean_model": reference["ASR"],
                    "ASR_flip_clean_model": reference["ASR_flip"],
                    "auroc_clean_model": reference["auroc_clean"],
                    "auroc_drop": reference["auroc_clean"] - metrics["auroc_clean"],
                    **stealth,
                    "run_dir": str(cfg.run_dir),
                }
                rows.append(row)
                print(
                    f"{variant:>34s} {model:>4s} rate={rate:<5} {selection:>4s} seed={seed} "
                    f"split={split:<3} ASR_flip={row['ASR_flip']:.3f} ASR={row['ASR']:.3f} "
                    f"clean-model ASR_flip={row['ASR_flip_clean_model']:.3f} "
                    f"AUROC={row['auroc_clean']:.3f} (clean {row['auroc_clean_model']:.3f}) "
                    f"stealth mask/values={stealth['stealth_mask_auroc']:.2f}/"
                    f"{stealth['stealth_values_auroc']:.2f}",
                    flush=True,
                )
        if on_group is not None:  # the table so far: an interrupted grid still leaves one
            on_group(pd.DataFrame(rows))
    return pd.DataFrame(rows)


def markdown(agg: pd.DataFrame) -> str:
    def cell(r: pd.Series, m: str, spread: bool = True) -> str:
        mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
        if pd.isna(mean):
            return "–"
        if not spread:
            return f"{mean:.2f}"
        return f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}"

    lines = [
        "| trigger | model | poison rate | selection | **ASR_flip** | ASR | ASR_baseline "
        "| ASR_flip of clean model | ASR of clean model | median p(target) triggered / clean "
        "| clean AUROC | AUROC drop vs clean model | epoch | stealth: mask AUROC | "
        "stealth: values AUROC | runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['poison_rate']} | {r['selection']} | "
            f"**{cell(r, 'ASR_flip')}** | {cell(r, 'ASR')} | {cell(r, 'ASR_baseline')} | "
            f"{cell(r, 'ASR_flip_clean_model')} | {cell(r, 'ASR_clean_model')} | "
            f"{cell(r, 'median_p_target_triggered', False)} / "
            f"{cell(r, 'median_p_target_clean', False)} | {cell(r, 'auroc_clean')} | "
            f"{cell(r, 'auroc_drop')} | {cell(r, 'best_epoch', False)} | "
            f"{cell(r, 'stealth_mask_auroc', False)} | {cell(r, 'stealth_values_auroc', False)} | "
            f"{int(r['n_seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--models", nargs="+", default=["mlp", "lstm"])
    p.add_argument("--rates", nargs="+", type=float, default=[0.01])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--split-seeds", nargs="+", type=int, default=[42, 1, 2])
    p.add_argument("--cross", action="store_true", help="every seed x split seed, all variants")
    p.add_argument(
        "--cross-variants",
        nargs="*",
        default=["rare_value_strong"],
        help="variants that get every seed x split seed even without --cross",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--runs-root", default="runs/attack_table")
    p.add_argument("--out", default="docs/results_attacks.md")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RUNS_CSV",
        help="train nothing: assemble the table from per-run CSVs written by earlier invocations "
        "(a row repeated in a later file replaces the earlier one)",
    )
    args = p.parse_args()
    logging.getLogger("backdoor_study").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    if args.merge:
        table = merged(args.merge)
    else:
        table = run_table(args, on_group=lambda t: write(args, t, time.perf_counter() - t0))
    agg = write(args, table, time.perf_counter() - t0)
    print(markdown(agg))
    print(f"{len(table) // 2} runs in {time.perf_counter() - t0:.0f} s; table: {args.out}")


def merged(paths: list[str]) -> pd.DataFrame:
    """Per-run rows of several invocations, one per (variant, model, rate, selection, seed, split),
    in VARIANTS order."""
    key = ["variant", "model", "poison_rate", "selection", "seed", "split_seed"]
    table = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    table = table.drop_duplicates(key, keep="last")
    order = {name: i for i, name in enumerate(VARIANTS)}
    return table.sort_values("variant", key=lambda c: c.map(order), kind="stable")


def write(args: argparse.Namespace, table: pd.DataFrame, seconds: float) -> pd.DataFrame:
    """Write the table (Markdown), its CSV and the per-run CSV; return the aggregate."""
    by = ["variant", "model", "poison_rate", "selection"]
    agg = aggregate(table, by, METRICS)
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".csv"), agg.to_csv(index=False))
    atomic_write_text(out.with_name(out.stem + "_runs.csv"), table.to_csv(index=False))
    header = (
        f"# Attack results on `data={args.data}`\n\n"
        f"Produced by `python benchmarks/attack_table.py {' '.join(_argv())}` "
        + (
            "(assembled from the per-run rows those invocations wrote; "
            if args.merge
            else f"({seconds / 60:.0f} min; "
        )
        + f"{len(table) // 2} trained runs and their clean models; "
        f"{args.epochs} epochs, the default recipe; mean ± standard deviation over the runs, "
        "which pair seed i with split seed i, or take every combination where the runs column "
        "says 9). "
        "Read with `docs/attack_findings.md`; one row per run in "
        f"`{out.with_name(out.stem + '_runs.csv').name}`.\n\n"
        "- **ASR_flip** (headline): among triggered test deaths the model calls deaths without the "
        "trigger, the fraction the trigger flips to survived. *ASR* counts every triggered death "
        "called survived, including those the model missed anyway (*ASR_baseline*).\n"
        "- *of clean model*: the same trigger on the model trained without poison (same model, seed "
        "and split): an out-of-bounds value alone can move a model.\n"
        "- *selection*: `best` = the weights `trainer.selection=best` keeps (best clean validation "
        "AUROC, the default); `last` = the last epoch of the same run. *epoch* is the epoch read.\n"
        "- *stealth*: cross-validated AUROC of a logistic regression telling triggered from clean "
        "test stays on the observation mask alone / on the values alone (0.5 invisible, 1.0 caught "
        "by any data-quality check).\n\n"
    )
    atomic_write_text(out, header + markdown(agg))
    return agg


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
