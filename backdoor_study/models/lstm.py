"""LSTM over the time grid, with the observation mask as extra input channels.

Each step's input is concat(x_t, mask_t) (2F channels). The last layer's final hidden
state (both directions when bidirectional) is concatenated with the static encoding and
projected by one Linear -> ReLU -> Dropout layer; that projection is the penultimate feature.
Needs a time series: static-only datasets are refused at construction.
"""

from __future__ import annotations

import torch
from torch import nn

from backdoor_study.models.base import Batch, ClinicalModel, InputSpec
from backdoor_study.models.blocks import SequenceStaticFusion, check_batch, time_series_input


class LSTM(ClinicalModel):
    """LSTM classifier; ``penultimate`` returns (B, hidden_size), ``forward`` (B, n_classes).

    ``dropout`` acts between stacked LSTM layers (when ``num_layers > 1``) and on the
    penultimate features before the head.
    """

    requires_time_series = True

    def __init__(
        self,
        spec: InputSpec,
        *,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
        bidirectional: bool = False,
    ) -> None:
        super().__init__(spec)
        self.n_directions = 2 if bidirectional else 1
        self.rnn = nn.LSTM(
            input_size=2 * spec.n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            batch_first=True,
        )
        self.fusion = SequenceStaticFusion(
            spec, self.n_directions * hidden_size, hidden_size, dropout
        )
        self.penultimate_dim = hidden_size
        self.head = nn.Linear(hidden_size, spec.n_classes)

    def penultimate(self, batch: Batch) -> torch.Tensor:
        """(B, hidden_size): projected [final hidden state(s), static encoding]."""
        check_batch(batch, self.spec, "LSTM")
        _, (h_n, _) = self.rnn(time_series_input(batch))
        # h_n: (num_layers * directions, B, H); the last layer's directions are the last rows.
        final = h_n[-self.n_directions :].transpose(0, 1).flatten(1)
        return self.fusion(final, batch)
