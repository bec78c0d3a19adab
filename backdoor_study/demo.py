"""``python -m backdoor_study.demo`` (``make demo``): the whole study in one command.

1. train a grid (models x triggers x poison rates x seeds) on the synthetic cohort (generated on
   first use), every run re-evaluated from its run directory (``eval`` must reproduce ``train``);
2. ``detect`` the poisoned runs at ``detect_rates`` with every detector (``conf/detector/``);
3. ``sanitize`` the runs at ``sanitize_rates`` with the detector of the highest mean detection AUROC;
4. ``report``: summary, statistics, figures and ``{runs_root}/report/index.html``;

then print where the page is and the ``mlflow ui`` command for the tracked runs. Completed runs,
detections and sanitized retrains are skipped, so a second invocation only rebuilds the report.
The training grid is also the train sweep preset ``experiment=demo`` (tests keep the two equal).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from backdoor_study import detect, report, sanitize, summarize
from backdoor_study.config import CONF_DIR
from backdoor_study.study import Cell, compose_config, run_grid
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
    "ASR_flip",
    "ASR",
    "ASR_baseline",
    "ASR_flip_clean_model",
    "ASR_clean_model",
    "confidence_shift",
    "n_poisoned",
]


def cells(cfg: DictConfig, tracking: list[str] = ()) -> list[Cell]:
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
                *tracking,
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


# --------------------------------------------------------------------------------------- stages
def tracking_overrides(cfg: DictConfig) -> list[str]:
    """``tracking=<cfg.track_with>`` for every stage (conf/tracking/: mlflow, none)."""
    return [f"tracking={cfg.track_with}"]


def compose_stage(name: str, overrides: list[str], tracking: list[str]) -> DictConfig:
    """The ``name`` config with ``overrides``, tracked like the training runs."""
    return compose_config(name, [*overrides, *tracking])


def detectors(cfg: DictConfig) -> list[str]:
    """``cfg.detectors``, or every option of the ``detector`` group when it is ``all``."""
    if cfg.detectors == "all":
        return sorted(p.stem for p in (CONF_DIR / "detector").glob("*.yaml"))
    return [str(d) for d in cfg.detectors]


def detect_all(cfg: DictConfig, run_dirs: list[str], tracking: list[str]) -> int:
    """Every detector on every run in ``run_dirs`` -> ``{run_dir}/detect/{detector}/``."""
    names = detectors(cfg)
    if not names:
        return 0
    jobs = list(itertools.product(names, run_dirs))
    for name, run_dir in tqdm(jobs, desc="detect", unit="run"):
        detect.run(
            compose_stage(
                "detect", [f"run_dir={run_dir}", f"detector={name}", "progress=false"], tracking
            )
        )
    return len(jobs)


def best_detector(runs_root: str) -> str | None:
    """The detector with the highest mean detection AUROC over the runs tree (None: no detection)."""
    table = summarize.collect(runs_root, progress=False)
    found = table[table["kind"] == "detect"] if "kind" in table else table.iloc[0:0]
    if found.empty or report.DETECTION_AUROC not in found:
        return None
    return str(found.groupby("detector")[report.DETECTION_AUROC].mean().idxmax())


def sanitize_all(cfg: DictConfig, run_dirs: list[str], detector: str, tracking: list[str]) -> int:
    """Retrain every run in ``run_dirs`` without what ``detector`` flagged."""
    # the retrain is the run's own resolved config: it keeps the run's tracking node
    retrain = ["trainer.progress=false"]
    for run_dir in tqdm(run_dirs, desc=f"sanitize ({detector})", unit="run"):
        sanitize.run(
            compose_stage(
                "sanitize",
                [
                    f"run_dir={run_dir}",
                    f"detector={detector}",
                    "progress=false",
                    f"train_overrides=[{','.join(repr(o) for o in retrain)}]",
                ],
                tracking,
            )
        )
    return len(run_dirs)


def mlflow_ui_command(runs_root: str) -> str | None:
    """The ``mlflow ui`` command for the store(s) the runs recorded (None: none tracked)."""
    table = summarize.collect(runs_root, progress=False)
    uris = sorted(set(table.get("mlflow_tracking_uri", pd.Series(dtype=str)).dropna()))
    return " ; ".join(f"mlflow ui --backend-store-uri {uri}" for uri in uris) or None


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole demo study; returns the stage counts, timings and the report's path."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    tracking = tracking_overrides(cfg)
    grid = cells(cfg, tracking)
    table = run_grid(
        tqdm(grid, desc="train", unit="run"),
        check_eval=bool(cfg.check_eval),
        on_result=lambda row: tqdm.write(_line(row)),
    )
    atomic_write_text(Path(cfg.results_csv), table.to_csv(index=False))
    timings["train_s"] = time.perf_counter() - started
    if cfg.check_eval and not table["eval_matches"].all():
        raise SystemExit("eval did not reproduce train for some runs")

    t = time.perf_counter()
    detect_rates = [float(r) for r in cfg.detect_rates]
    run_dirs = [d for d, r in zip(table["run_dir"], table["poison_rate"]) if r in detect_rates]
    n_detect = detect_all(cfg, run_dirs, tracking)
    timings["detect_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chosen = best_detector(str(cfg.runs_root)) if n_detect else None
    sanitize_rates = [float(r) for r in cfg.sanitize_rates]
    to_sanitize = [d for d, r in zip(table["run_dir"], table["poison_rate"]) if r in sanitize_rates]
    n_sanitize = sanitize_all(cfg, to_sanitize, chosen, tracking) if chosen else 0
    timings["sanitize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    page = report.run(compose_config("report", [f"runs_root={cfg.runs_root}"]))
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    return {
        "table": table,
        "n_train": len(table),
        "n_detect": n_detect,
        "best_detector": chosen,
        "n_sanitize": n_sanitize,
        "report": page,
        "mlflow_ui": mlflow_ui_command(str(cfg.runs_root)),
        "timings": timings,
    }


def main(cfg: DictConfig) -> None:
    logging.getLogger("backdoor_study").setLevel(logging.WARNING)
    out = run(cfg)
    shown = out["table"][[c for c in COLUMNS if c in out["table"]]]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.round(3).to_string(index=False))
    t = out["timings"]
    print(
        f"\n{out['n_train']} train runs ({t['train_s']:.0f} s), {out['n_detect']} detections "
        f"({t['detect_s']:.0f} s), {out['n_sanitize']} sanitized retrains with "
        f"{out['best_detector'] or '-'} ({t['sanitize_s']:.0f} s), report ({t['report_s']:.0f} s): "
        f"{t['total_s']:.0f} s in all"
    )
    print(f"report: {Path(out['report']).resolve()}")
    if out["mlflow_ui"]:
        print(f"browse the tracked runs: {out['mlflow_ui']}")
    else:
        print("no run recorded an MLflow run (track_with=none)")


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("demo", main)


if __name__ == "__main__":
    _main()
