"""Temporal convolutional network (Bai et al. 2018): dilated causal convolutions over time.

Input channels are concat(x, mask) (2F). Block i holds two causal convolutions with dilation
2**i (left padding only, so the output at step t depends on steps <= t), ReLU and dropout,
and a residual connection (1x1 convolution when the channel count changes). The last time
step's features, concatenated with the static encoding, go through Linear -> ReLU -> Dropout
to give the penultimate features. Needs a time series.

The receptive field of the last step is ``1 + 2 * (kernel_size - 1) * (2**len(channels) - 1)``
steps (29 at the default [32, 32, 32], kernel 3); earlier steps do not reach the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from backdoor_study.models.base import Batch, ClinicalModel, InputSpec
from backdoor_study.models.blocks import SequenceStaticFusion, check_batch, time_series_input


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only: (B, C_in, T) -> (B, C_out, T), output t sees inputs <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


class TemporalBlock(nn.Module):
    """Two causal convolutions with a residual connection: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            CausalConv1d(in_channels, out_channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
            CausalConv1d(out_channels, out_channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.convs(x) + self.residual(x))


class TCN(ClinicalModel):
    """TCN classifier; ``penultimate`` returns (B, channels[-1]), ``forward`` (B, n_classes)."""

    requires_time_series = True

    def __init__(
        self,
        spec: InputSpec,
        *,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(spec)
        blocks: list[nn.Module] = []
        in_channels = 2 * spec.n_features
        for i, out_channels in enumerate(channels):
            blocks.append(TemporalBlock(in_channels, out_channels, kernel_size, 2**i, dropout))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.receptive_field = 1 + 2 * (kernel_size - 1) * (2 ** len(channels) - 1)
        self.fusion = SequenceStaticFusion(spec, in_channels, in_channels, dropout)
        self.penultimate_dim = in_channels
        self.head = nn.Linear(in_channels, spec.n_classes)

    def temporal_features(self, batch: Batch) -> torch.Tensor:
        """(B, channels[-1], T) causal features: column t depends only on steps <= t."""
        check_batch(batch, self.spec, "TCN")
        return self.blocks(time_series_input(batch).transpose(1, 2))

    def penultimate(self, batch: Batch) -> torch.Tensor:
        """(B, channels[-1]): projected [last step's features, static encoding]."""
        last = self.temporal_features(batch)[:, :, -1]
        return self.fusion(last, batch)
