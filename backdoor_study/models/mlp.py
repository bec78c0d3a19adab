"""Multilayer perceptron on the flattened time grid, its mask and the statics.

The whole (T, F) grid and its (T, F) observation mask are flattened, concatenated with the
static encoding (numeric statics + categorical embeddings) and passed through ``hidden_sizes``
Linear -> ReLU -> Dropout layers. Works on static-only datasets (T = F = 0), where the input
is the static encoding alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoor_study.models.base import Batch, ClinicalModel, InputSpec
from backdoor_study.models.blocks import StaticEncoder, check_batch, hidden_layers


class MLP(ClinicalModel):
    """MLP baseline; penultimate features are the last hidden layer's activations.

    Input dimension: 2 * T * F (values and mask) + S + C * emb_dim. ``penultimate`` returns
    (B, hidden_sizes[-1]); ``forward`` returns (B, n_classes) logits.
    """

    def __init__(
        self,
        spec: InputSpec,
        *,
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(spec)
        self.static_encoder = StaticEncoder(spec)
        in_dim = 2 * spec.n_steps * spec.n_features + self.static_encoder.out_dim
        if in_dim == 0:
            raise ValueError(f"MLP has no inputs: the InputSpec {spec} has no features at all")
        self.body = hidden_layers(in_dim, list(hidden_sizes), dropout)
        self.penultimate_dim = int(hidden_sizes[-1])
        self.head = nn.Linear(self.penultimate_dim, spec.n_classes)

    def penultimate(self, batch: Batch) -> torch.Tensor:
        """(B, hidden_sizes[-1]) activations of the last hidden layer."""
        check_batch(batch, self.spec, "MLP")
        inputs = torch.cat(
            [batch["x"].flatten(1), batch["mask"].flatten(1), self.static_encoder(batch)], dim=1
        )
        return self.body(inputs)
