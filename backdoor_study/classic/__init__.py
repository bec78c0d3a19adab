"""The classic data-poisoning study: scikit-learn models on static tables, feature noise and
label flips, sanitisation by data-level detectors, data quantity vs quality, the accuracy paradox.

``python -m backdoor_study.classic`` (``__main__``) is the thin Hydra entry; :func:`run` is the
pure function tests call with a composed config. ``study`` picks what one invocation does:

- ``single`` (default): one fit into one run directory (``runner``)
- ``data_quantity_quality``: learning curves per poison level and the data multiplier (``curves``)
- ``accuracy_paradox``: majority-class vs real models on imbalanced tasks (``paradox``)

Reuses the package's data sources, ``poison_dataset``, ``metrics``, ``rundir`` rules and
detectors; the config root is ``conf/classic/``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from backdoor_study.config import validate

__all__ = ["run"]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the study ``cfg.study`` names; returns its metrics (also written to the run dir)."""
    from backdoor_study.classic import core

    validate(cfg)
    core.model_params(cfg.model)  # a torch model (model=mlp) is refused before anything runs
    study = str(cfg.study)
    if study == "data_quantity_quality":
        from backdoor_study.classic.curves import run_curves

        return run_curves(cfg)
    if study == "accuracy_paradox":
        from backdoor_study.classic.paradox import run_paradox

        return run_paradox(cfg)
    from backdoor_study.classic.runner import run_single

    return run_single(cfg)
