"""``python -m backdoor_study.demo`` (``make demo``): the whole study in one command.

1. train a grid (models x triggers x poison rates x seeds) on the synthetic cohort (generated on
   first use), every run re-evaluated from its run directory (``eval`` must reproduce ``train``);
2. ``detect`` every poisoned run with every detector (``conf/detector/``);
3. ``sanitize`` every poisoned run with the detector of the highest mean detection AUROC;
4. ``report``: summary, statistics, figures and ``{runs_root}/report/index.html``;

then print where the page is and the ``mlflow ui`` command for the tracked runs. Completed runs,
detections and sanitized retrains are skipped, so a second invocation only rebuilds the report.
Stages whose entry point is not in this build (``detect`` / ``sanitize`` of issue #7, MLflow
tracking of issue #10) are skipped with a warning naming the missing piece.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from backdoor_study import report, summarize
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
def _option_exists(group: str, name: str) -> bool:
    return (CONF_DIR / group / f"{name}.yaml").is_file()


def tracking_overrides(cfg: DictConfig) -> list[str]:
    """``tracking=<cfg.tracking>`` where this build has that option (MLflow: issue #10)."""
    if _option_exists("tracking", str(cfg.tracking)):
        return [f"tracking={cfg.tracking}"]
    log.warning(
        "tracking=%s is not in this build (conf/tracking/): runs are not tracked", cfg.tracking
    )
    return []


def _entry_point(name: str) -> Any | None:
    """``backdoor_study.<name>`` with its ``run(cfg)``, or None where this build lacks it."""
    if importlib.util.find_spec(f"backdoor_study.{name}") is None:
        log.warning("backdoor_study.%s is not in this build (issue #7): stage skipped", name)
        return None
    return importlib.import_module(f"backdoor_study.{name}")


def compose_stage(name: str, overrides: list[str], tracking: list[str]) -> DictConfig:
    """The ``name`` config with ``overrides``, tracked like the training runs where that config has
    a ``tracking`` group (issue #10 adds it to detect and sanitize)."""
    cfg = compose_config(name, overrides)
    return compose_config(name, [*overrides, *tracking]) if tracking and "tracking" in cfg else cfg


def detectors(cfg: DictConfig) -> list[str]:
    """``cfg.detectors``, or every option of the ``detector`` group when it is ``all``."""
    if cfg.detectors == "all":
        return sorted(p.stem for p in (CONF_DIR / "detector").glob("*.yaml"))
    return [str(d) for d in cfg.detectors]


def poisoned_run_dirs(table: pd.DataFrame) -> list[str]:
    return table.loc[table["poison_rate"] > 0, "run_dir"].tolist()


def detect_all(cfg: DictConfig, run_dirs: list[str], tracking: list[str]) -> int:
    """Every detector on every run in ``run_dirs`` -> ``{run_dir}/detect/{detector}/``."""
    detect = _entry_point("detect")
    names = detectors(cfg)
    if detect is None or not names:
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
    detect = table[table["kind"] == "detect"] if "kind" in table else table.iloc[0:0]
    if detect.empty or report.DETECTION_AUROC not in detect:
        return None
    return str(detect.groupby("detector")[report.DETECTION_AUROC].mean().idxmax())


def sanitize_all(cfg: DictConfig, run_dirs: list[str], detector: str, tracking: list[str]) -> int:
    """Retrain every run in ``run_dirs`` without what ``detector`` flagged."""
    sanitize = _entry_point("sanitize")
    if sanitize is None:
        return 0
    retrain = ["trainer.progress=false", *tracking]
    for run_dir in tqdm(run_dirs, desc=f"sanitize ({detector})", unit="run"):
        sanitize.run(
            compose_stage(
                "sanitize",
                [
                    f"run_dir={run_dir}",
                    f"detector={detector}",
                    "progress=false",
                    f"train_overrides=[{','.join(retrain)}]",
                ],
                tracking,
            )
        )
    return len(run_dirs)


def mlflow_ui_command(tracking: list[str]) -> str | None:
    """The ``mlflow ui`` command for the store the runs were tracked in (None: not tracked)."""
    if not tracking:
        return None
    node = compose_config("train", tracking).tracking
    uri = OmegaConf.select(node, "uri", default=None)
    return f"mlflow ui --backend-store-uri {uri}" if uri else None


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
    run_dirs = poisoned_run_dirs(table)
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
        "mlflow_ui": mlflow_ui_command(tracking),
        "timings": timings,
    }


def _main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="demo")
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
            print("runs were not tracked in MLflow (no tracking option in this build)")

    main()


if __name__ == "__main__":
    _main()
