"""``python -m backdoor_study.classic``: the classic study's thin Hydra entry point.

    python -m backdoor_study.classic data=iris model=logreg attack=feature_noise poison_rate=0.1 seed=0
    python -m backdoor_study.classic -m data=iris,wine model=logreg,random_forest \
        attack=feature_noise,label_flip poison_rate=0,0.05,0.1,0.5 'seed=range(10)'
    python -m backdoor_study.classic experiment=data_quantity_quality
"""

from __future__ import annotations

from omegaconf import DictConfig

from backdoor_study.config import CONF_DIR

CLASSIC_CONF_DIR = CONF_DIR / "classic"


def main() -> None:
    import hydra

    from backdoor_study import sweep
    from backdoor_study.classic import run

    @hydra.main(version_base="1.3", config_path=str(CLASSIC_CONF_DIR), config_name="classic")
    def _main(cfg: DictConfig) -> None:
        metrics = sweep.run_job(cfg, run)
        if metrics is None:  # a failed job of a sweep, reported at the sweep's end
            return
        shown = {
            k: round(v, 4)
            for k, v in metrics.items()
            if k in ("acc_test", "balanced_acc_test", "train_test_gap", "detection_recall")
            and isinstance(v, float)
        }
        state = "skipped (already complete)" if metrics.get("skipped") else "done"
        print(f"{state}: {cfg.run_dir} {shown}")

    _main()


if __name__ == "__main__":
    main()
