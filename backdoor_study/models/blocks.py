"""Building blocks the four models share: batch checks, static encoders, grid summaries, MLPs.

Each piece here is used by more than one model, so the logic exists once: how a batch is
checked against the :class:`InputSpec`, how categorical statics become embeddings, how the
time grid is summarised for the tabular model, and how a stack of hidden layers is built.
Nothing here owns a head or decides what a model's penultimate features are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoor_study.data.summaries import SUMMARY_NAMES
from backdoor_study.models.base import Batch, InputSpec

# Width of each categorical static's embedding in the MLP, LSTM and TCN (the TabTransformer
# uses its own `dim`); capped by the largest cardinality, as a one-hot would be no wider.
STATIC_EMBEDDING_DIM = 8


def check_batch(batch: Batch, spec: InputSpec, model_name: str) -> None:
    """Raise ``ValueError`` naming the key if a batch's shapes disagree with ``spec``.

    Shape checks only (no data-dependent synchronisation), so they cost nothing per step.
    """
    expected = {
        "x": (spec.n_steps, spec.n_features),
        "mask": (spec.n_steps, spec.n_features),
        "static_num": (spec.n_static_num,),
        "static_cat": (len(spec.static_cat_cardinalities),),
    }
    for key, tail in expected.items():
        if key not in batch:
            raise ValueError(f"{model_name}: batch has no {key!r}; keys are {sorted(batch)}")
        shape = tuple(batch[key].shape)
        if shape[1:] != tail:
            raise ValueError(
                f"{model_name}: batch[{key!r}] has shape {shape}, expected (B, "
                f"{', '.join(map(str, tail))}) from the model's InputSpec"
            )


class CategoricalEmbedding(nn.Module):
    """One embedding row per (column, level), looked up for all columns at once.

    Input ``codes`` (B, C) int64 with 0 = unknown and 1..k the levels of each column; output
    (B, C, dim). The unknown code of every column has its own learned row. Columns share one
    table via per-column offsets, so the lookup is a single vectorised ``embedding`` call.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.dim = dim
        bad = [c for c in self.cardinalities if c < 1]
        if bad:
            raise ValueError(
                f"static_cat_cardinalities={list(self.cardinalities)} is invalid: each must be "
                ">= 1 (the unknown code 0 plus the levels)"
            )
        offsets = torch.tensor([0, *self.cardinalities[:-1]], dtype=torch.long).cumsum(0)
        # Derived from the spec, so kept out of the state dict.
        self.register_buffer(
            "offsets", offsets if self.cardinalities else offsets[:0], persistent=False
        )
        self.register_buffer(
            "limits", torch.tensor(self.cardinalities, dtype=torch.long), persistent=False
        )
        self.table = nn.Embedding(max(1, sum(self.cardinalities)), dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, C) int64 codes -> (B, C, dim) embeddings."""
        if codes.shape[1] == 0:
            return codes.new_zeros((codes.shape[0], 0, self.dim), dtype=self.table.weight.dtype)
        out_of_range = (codes < 0) | (codes >= self.limits)
        if bool(out_of_range.any()):
            col = int(out_of_range.any(0).nonzero()[0])
            values = codes[:, col][out_of_range[:, col]].unique().tolist()[:5]
            raise ValueError(
                f"static_cat column {col} has codes {values}, outside [0, "
                f"{self.cardinalities[col] - 1}] (0 = unknown, 1..k = levels)"
            )
        return self.table(codes + self.offsets)


class StaticEncoder(nn.Module):
    """Numeric statics concatenated with flattened categorical embeddings.

    Input: ``static_num`` (B, S) and ``static_cat`` (B, C) from the batch. Output
    (B, S + C * emb_dim), where emb_dim = min(STATIC_EMBEDDING_DIM, largest cardinality).
    With S = 0 and C = 0 the output is (B, 0), which concatenates harmlessly.
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        cards = spec.static_cat_cardinalities
        emb_dim = min(STATIC_EMBEDDING_DIM, max(cards)) if cards else 0
        self.embedding = CategoricalEmbedding(cards, emb_dim) if cards else None
        self.out_dim = spec.n_static_num + len(cards) * emb_dim

    def forward(self, batch: Batch) -> torch.Tensor:
        num = batch["static_num"]
        if self.embedding is None:
            return num
        cat = self.embedding(batch["static_cat"]).flatten(1)
        return torch.cat([num, cat], dim=1)


def time_series_input(batch: Batch) -> torch.Tensor:
    """Values and missingness side by side: (B, T, F) x and mask -> (B, T, 2F)."""
    return torch.cat([batch["x"], batch["mask"]], dim=2)


def grid_summaries(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-variable summaries over time: (B, T, F) x and mask -> (B, F * 6), never NaN.

    The six summaries are :data:`backdoor_study.data.summaries.SUMMARY_NAMES` (last observed,
    mean, min, max, std over observed steps, fraction observed), in the same variable-major
    order as the NumPy reference (``"{j}:{summary}"``). Only observed steps count; a variable
    never observed in a stay gets 0 for its value summaries (the training mean, since ``x`` is
    z-scored) and 0 for fraction observed. Differentiable in ``x`` with finite gradients, so
    saliency detectors can take input gradients through it.
    """
    b, t, f = x.shape
    if f == 0 or t == 0:
        return x.new_zeros((b, f * len(SUMMARY_NAMES)))
    observed = mask > 0.5
    w = observed.to(x.dtype)
    n_obs = w.sum(1)  # (B, F)
    any_obs = n_obs > 0
    denom = n_obs.clamp_min(1.0)

    mean = (x * w).sum(1) / denom
    var = ((x - mean.unsqueeze(1)) ** 2 * w).sum(1) / denom
    std = var.clamp_min(1e-12).sqrt()  # clamp keeps the gradient finite at zero variance
    vmin = x.masked_fill(~observed, float("inf")).amin(1)
    vmax = x.masked_fill(~observed, float("-inf")).amax(1)
    steps = torch.arange(t, device=x.device).view(1, t, 1)
    last_idx = (steps * observed).amax(1, keepdim=True)  # (B, 1, F); 0 when never observed
    last = x.gather(1, last_idx).squeeze(1)
    frac = w.mean(1)

    zero = x.new_zeros(())
    values = [torch.where(any_obs, s, zero) for s in (last, mean, vmin, vmax, std)]
    by_name = dict(zip(("last", "mean", "min", "max", "std"), values))
    by_name["frac_observed"] = frac
    return torch.stack([by_name[name] for name in SUMMARY_NAMES], dim=2).reshape(b, -1)


def hidden_layers(in_dim: int, sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each size: (B, in_dim) -> (B, sizes[-1])."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = size
    return nn.Sequential(*layers)


class SequenceStaticFusion(nn.Module):
    """A sequence model's summary vector joined with the statics, as its penultimate features.

    (B, sequence_dim) features and the batch's statics -> concat with the
    :class:`StaticEncoder` output -> Linear -> ReLU -> Dropout -> (B, out_dim).
    """

    def __init__(self, spec: InputSpec, sequence_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.static_encoder = StaticEncoder(spec)
        self.project = hidden_layers(sequence_dim + self.static_encoder.out_dim, [out_dim], dropout)
        self.out_dim = out_dim

    def forward(self, sequence_features: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.project(torch.cat([sequence_features, self.static_encoder(batch)], dim=1))
