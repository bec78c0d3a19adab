"""Run a grid of ``train`` runs in-process and aggregate their metrics over seeds.

Used by the demo study and the benchmark tables. Each grid cell is a label (what it is) plus the
Hydra overrides that make it; completed runs are skipped by ``train.run``, so a grid can be
interrupted and run again. For large sweeps use Hydra multirun (``python -m backdoor_study.train -m``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import train
from backdoor_study.config import CONF_DIR
from backdoor_study.metrics import summarize_seeds

Cell = tuple[dict[str, Any], list[str]]


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """The ``name`` config (train, detect, sanitize, report, ...) with ``overrides``, from a script,
    a test or inside ``@hydra.main``."""
    if GlobalHydra.instance().is_initialized():  # under @hydra.main, whose search path is CONF_DIR
        return compose(name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def compose_train(overrides: list[str]) -> DictConfig:
    """The ``train`` config with ``overrides`` (see :func:`compose_config`)."""
    return compose_config("train", overrides)


def run_grid(
    cells: Iterable[Cell],
    *,
    check_eval: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Train every cell (skipping completed runs); one row per cell: its labels + scalar metrics.

    With ``check_eval`` every run is re-evaluated from its run directory and ``eval_matches`` says
    whether eval reproduced what train wrote.
    """
    rows = []
    for labels, overrides in cells:
        cfg = compose_train(overrides)
        metrics = train.run(cfg)
        row = {**labels, "run_dir": str(cfg.run_dir)}
        row.update(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        row["skipped"] = bool(metrics.get("skipped", False))
        if check_eval:
            eval_cfg = OmegaConf.create(
                {"run_dir": str(cfg.run_dir), "device": "auto", "checkpoint": None}
            )
            row["eval_matches"] = eval_mod.run(eval_cfg)["matches_train"]
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean, standard deviation and seed count of each metric per group (NaN-aware)."""
    out = []
    for key, group in table.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            if m not in group:
                continue
            s = summarize_seeds(group[m].tolist())
            row[f"{m}_mean"] = s["mean"]
            row[f"{m}_std"] = s["std"]
        row["n_seeds"] = len(group)
        out.append(row)
    return pd.DataFrame(out)
