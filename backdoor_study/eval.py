"""``python -m backdoor_study.eval run_dir=...``: recompute a finished run's metrics from its directory.

Reads only the run directory: its resolved config rebuilds the data (the dataset digest must match
the one recorded), ``final_model.pt`` is loaded with ``weights_only=True``, and every metric is
recomputed by the same code ``train`` used. The result is compared with the run's ``metrics.json``
and written to ``eval_metrics.json`` (a new file; ``metrics.json`` is never touched).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backdoor_study import rundir, tracking
from backdoor_study.config import CONF_DIR
from backdoor_study.experiment import prepare
from backdoor_study.models.base import build_model
from backdoor_study.train import FINAL_MODEL_FILE, evaluate
from backdoor_study.training import load_checkpoint, resolve_device, seed_everything
from backdoor_study.utils import read_json, write_json

log = logging.getLogger("backdoor_study.eval")

# Not recomputed from this run alone: they come from the trainer or from another run.
CARRIED_KEYS = (
    "best_epoch",
    "best_val_auroc",
    "epochs_run",
    "stopped_early",
    "n_poisoned",
    "n_train",
    "n_test",
    "ASR_clean_model",
    "ASR_flip_clean_model",
)


class EvalError(RuntimeError):
    pass


def load_run_config(run_dir: Path) -> DictConfig:
    """The fully resolved config a run recorded."""
    path = run_dir / rundir.RESOLVED_CONFIG_FILE
    if not path.exists():
        raise EvalError(f"{run_dir} is not a run directory: no {rundir.RESOLVED_CONFIG_FILE}")
    return OmegaConf.load(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    if not (run_dir / rundir.METRICS_FILE).exists():
        raise EvalError(
            f"{run_dir} holds no completed run (no {rundir.METRICS_FILE}); train it first"
        )
    run_cfg = load_run_config(run_dir)
    metadata = read_json(run_dir / rundir.METADATA_FILE)
    seed_everything(int(run_cfg.seed))
    prepared = prepare(run_cfg, expected_digest=metadata["data"]["digest"])
    split_digest = prepared.splits.digest(prepared.dataset)
    if split_digest != metadata["split_digest"]:
        raise EvalError(
            f"{run_dir}: the splits rebuilt from the config differ from the recorded ones"
        )

    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else run_dir / FINAL_MODEL_FILE
    state = load_checkpoint(ckpt_path)
    if "model_state" not in state:
        raise EvalError(
            f"{ckpt_path} holds no model_state; pass a final_model.pt or checkpoint_epoch_N.pt"
        )
    model = build_model(run_cfg.model, prepared.spec)
    model.load_state_dict(state["model_state"])
    device = resolve_device(cfg.device)
    model.to(device)
    metrics, _ = evaluate(run_cfg, model, prepared, device)

    recorded = read_json(run_dir / rundir.METRICS_FILE)
    for key in CARRIED_KEYS:
        if key in recorded:
            metrics[key] = recorded[key]
    mismatches = [k for k in recorded if k != "skipped" and not _same(recorded[k], metrics.get(k))]
    result = {
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt_path),
        "matches_train": not mismatches,
        "mismatched_keys": mismatches,
        "metrics": metrics,
    }
    write_json(run_dir / "eval_metrics.json", result)
    parent, recorded_uri = tracking.train_run_id(run_dir)
    with tracking.start(
        cfg,
        "eval",
        run_dir,
        config_digest=metadata["config_digest"],
        run_cfg=run_cfg,
        parent_run_id=parent,
        recorded_uri=recorded_uri,
    ) as tracker:
        tracking.log_eval_run(tracker, run_dir, result, run_dir / "eval_metrics.json")
    return result


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
    def main(cfg: DictConfig) -> None:
        result = run(cfg)
        m = result["metrics"]
        keys = [
            "auroc_clean",
            "auprc_clean",
            "acc_clean",
            "f1_clean",
            "ece_clean",
            "ASR_flip",
            "ASR",
            "confidence_shift",
        ]
        for k in keys:
            if isinstance(m.get(k), float):
                print(f"{k:>18s}: {m[k]:.4f}")
        if result["matches_train"]:
            print(f"all {len(m)} metrics match what train wrote ({result['run_dir']}/metrics.json)")
        else:
            print(f"MISMATCH with train's metrics.json in: {result['mismatched_keys']}")
            raise SystemExit(1)

    main()


if __name__ == "__main__":
    _main()
