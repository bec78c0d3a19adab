"""``python -m backdoor_study.demo`` (``make demo``): the end-to-end demo study.

Runs a small grid (models x triggers x poison rates x seeds) of ``train`` runs on the synthetic
cohort, re-evaluates every run from its run directory with ``eval`` (which must reproduce what
``train`` wrote), and prints one table of clean AUROC and attack success rate. Completed runs are
skipped, so a second invocation only prints the table.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from backdoor_study.config import CONF_DIR
from backdoor_study.study import Cell, run_grid
from backdoor_study.utils import atomic_write_text

COLUMNS = [
    "model",
    "trigger",
    "poison_rate",
    "seed",
    "auroc_clean",
    "auprc_clean",
    "ece_clean",
    "ASR_flip",
    "ASR",
    "ASR_baseline",
    "ASR_flip_clean_model",
    "ASR_clean_model",
    "confidence_shift",
    "n_poisoned",
]


def cells(cfg: DictConfig) -> list[Cell]:
    grid = itertools.product(cfg.models, cfg.triggers, cfg.poison_rates, cfg.seeds)
    return [
        (
            {"model": model, "trigger": trigger, "poison_rate": float(rate), "seed": int(seed)},
            [
                f"model={model}",
                f"trigger={trigger}",
                f"poison_rate={float(rate)}",
                f"seed={int(seed)}",
                f"epochs={int(cfg.epochs)}",
                f"runs_root={cfg.runs_root}",
                "trainer.progress=false",
                *cfg.train_overrides,
            ],
        )
        for model, trigger, rate, seed in grid
    ]


def _line(row: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "   -  " if v is None or (isinstance(v, float) and v != v) else f"{v:6.3f}"

    return (
        f"{row['model']:>15s} {row['trigger']:>12s} rate={row['poison_rate']:<5} seed={row['seed']} "
        f"AUROC={f(row.get('auroc_clean'))} ASR_flip={f(row.get('ASR_flip'))} "
        f"ASR={f(row.get('ASR'))} ASR_baseline={f(row.get('ASR_baseline'))} "
        f"clean model: ASR_flip={f(row.get('ASR_flip_clean_model'))} ASR={f(row.get('ASR_clean_model'))} "
        f"eval reproduces train: {row['eval_matches']}"
    )


def _main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="demo")
    def main(cfg: DictConfig) -> None:
        logging.getLogger("backdoor_study").setLevel(logging.WARNING)
        table = run_grid(
            cells(cfg), check_eval=True, on_result=lambda row: print(_line(row), flush=True)
        )
        out = Path(cfg.results_csv)
        atomic_write_text(out, table.to_csv(index=False))
        shown = table[[c for c in COLUMNS if c in table]]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(shown.round(3).to_string(index=False))
        print(f"\nresults: {out}; run directories under {cfg.runs_root}/")
        if not table["eval_matches"].all():
            raise SystemExit("eval did not reproduce train for some runs")

    main()


if __name__ == "__main__":
    _main()
