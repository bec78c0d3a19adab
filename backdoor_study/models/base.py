"""The interface every model shares, and the one function that builds a model from config.

A batch is a dict of tensors produced by :mod:`backdoor_study.data.preprocess`:

- ``x``: (B, T, F) float32, imputed and normalised grid (zeros-size when static-only)
- ``mask``: (B, T, F) float32, 1.0 where observed
- ``static_num``: (B, S) float32, imputed and normalised numeric statics
- ``static_cat``: (B, C) int64 codes, 0 = unknown, 1..k = the k levels

``forward(batch)`` returns (B, n_classes) logits; ``penultimate(batch)`` returns the (B, D)
representation just before the output layer, which the detectors read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InputSpec:
    """Shapes a model needs at construction time, taken from the dataset."""

    n_steps: int
    n_features: int
    n_static_num: int
    static_cat_cardinalities: tuple[
        int, ...
    ]  # per categorical static, including the unknown code 0
    n_classes: int

    @property
    def is_time_series(self) -> bool:
        return self.n_steps > 0 and self.n_features > 0


class ClinicalModel(nn.Module):
    """Base class: subclasses implement ``penultimate`` and set ``self.head``."""

    spec: InputSpec
    head: nn.Module
    requires_time_series: bool = False

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        if self.requires_time_series and not spec.is_time_series:
            raise ValueError(
                f"model {type(self).__name__} needs a time series, but the dataset is static-only "
                f"(n_steps={spec.n_steps}, n_features={spec.n_features}); use model=mlp or model=tabtransformer"
            )
        self.spec = spec

    def penultimate(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.penultimate(batch))


def build_model(model_cfg: Any, spec: InputSpec) -> ClinicalModel:
    """Instantiate ``model_cfg._target_`` with the config's hyperparameters and ``spec``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    params = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if not isinstance(model_cfg, dict)
        else dict(model_cfg)
    )
    params.pop("name", None)
    # `_partial_` keeps `spec` out of instantiate's recursive conversion (it must stay an InputSpec).
    return instantiate({**params, "_partial_": True}, _convert_="all")(spec=spec)
