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
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import train
from backdoor_study.config import CONF_DIR
from backdoor_study.utils import atomic_write_text

log = logging.getLogger("backdoor_study.demo")

COLUMNS = [
    "model",
    "trigger",
    "poison_rate",
    "seed",
    "auroc_clean",
    "auprc_clean",
    "ece_clean",
    "ASR",
    "ASR_clean_model",
    "confidence_shift",
    "n_poisoned",
    "eval_matches",
]


def study(cfg: DictConfig) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    grid = itertools.product(cfg.models, cfg.triggers, cfg.poison_rates, cfg.seeds)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for model, trigger, rate, seed in grid:
            overrides = [
                f"model={model}",
                f"trigger={trigger}",
                f"poison_rate={float(rate)}",
                f"seed={int(seed)}",
                f"epochs={int(cfg.epochs)}",
                f"runs_root={cfg.runs_root}",
                "trainer.progress=false",
                *cfg.train_overrides,
            ]
            run_cfg = compose("train", overrides=overrides)
            metrics = train.run(run_cfg)
            checked = eval_mod.run(
                OmegaConf.create({"run_dir": run_cfg.run_dir, "device": "auto", "checkpoint": None})
            )
            row = {
                "model": model,
                "trigger": trigger,
                "poison_rate": float(rate),
                "seed": int(seed),
            }
            row.update({k: metrics.get(k) for k in COLUMNS if k in metrics})
            row["eval_matches"] = checked["matches_train"]
            rows.append(row)
            print(_line(row), flush=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def _line(row: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "   -  " if v is None or (isinstance(v, float) and v != v) else f"{v:6.3f}"

    return (
        f"{row['model']:>15s} {row['trigger']:>12s} rate={row['poison_rate']:<5} seed={row['seed']} "
        f"AUROC={f(row.get('auroc_clean'))} ASR={f(row.get('ASR'))} "
        f"ASR(clean model)={f(row.get('ASR_clean_model'))} eval reproduces train: {row['eval_matches']}"
    )


def _main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="demo")
    def main(cfg: DictConfig) -> None:
        logging.getLogger("backdoor_study").setLevel(logging.WARNING)
        table = study(cfg)
        out = Path(cfg.results_csv)
        atomic_write_text(out, table.to_csv(index=False))
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.drop(columns=["eval_matches"]).round(3).to_string(index=False))
        print(f"\nresults: {out}; run directories under {cfg.runs_root}/")
        if not table["eval_matches"].all():
            raise SystemExit("eval did not reproduce train for some runs")

    main()


if __name__ == "__main__":
    _main()
