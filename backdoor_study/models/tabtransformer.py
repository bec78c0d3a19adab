"""TabTransformer (Huang et al. 2020) with the time grid entering as per-variable summaries.

Categorical statics become one token each: a learned value embedding of width
``dim - dim // 8`` (own row per column and level, the unknown code included) concatenated with
a learned column embedding of width ``dim // 8`` shared by all levels of that column, as in
the paper. ``depth`` post-norm transformer layers contextualise the tokens; their flattened
output is concatenated with the layer-normalised continuous features, which are the numeric
statics plus six summaries per grid variable (:func:`~backdoor_study.models.blocks.grid_summaries`:
last observed value, mean, min, max, std, fraction observed), computed in torch from ``x``
and ``mask``. An MLP (``mlp_hidden``, ReLU, ``ff_dropout``) follows; its last hidden layer is
the penultimate feature.

Degenerate inputs are handled rather than refused: with no categorical columns the
transformer is skipped and the model is an MLP on the continuous features; static-only
datasets (T = F = 0) have no summaries. With fewer than :data:`MIN_FEATURES_FOR_LAYER_NORM`
continuous features the layer norm is skipped: it removes each sample's mean and scale across
features, two degrees of freedom that are negligible among the 100+ features of a clinical grid
but half of iris's four (test accuracy fell from ~1.0 to 0.76 with it). The statics arrive
z-scored by the preprocessor, so they are on a common scale without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoor_study.data.summaries import SUMMARY_NAMES
from backdoor_study.models.base import Batch, ClinicalModel, InputSpec
from backdoor_study.models.blocks import (
    CategoricalEmbedding,
    check_batch,
    grid_summaries,
    hidden_layers,
)

MIN_FEATURES_FOR_LAYER_NORM = 8


class TransformerLayer(nn.Module):
    """Post-norm transformer encoder layer: (B, C, dim) -> (B, C, dim).

    Separate dropouts for the attention weights and the feed-forward part, as the paper tunes.
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float, ff_dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(ff_dropout),
            nn.Linear(4 * dim, dim),
            nn.Dropout(ff_dropout),
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm1(tokens + attended)
        return self.norm2(tokens + self.feed_forward(tokens))


class TabTransformer(ClinicalModel):
    """TabTransformer; ``penultimate`` returns (B, mlp_hidden[-1]), ``forward`` (B, n_classes).

    MLP input: C * dim contextual embeddings + S + 6 * F continuous features. With an empty
    ``mlp_hidden`` the penultimate feature is that input itself.
    """

    def __init__(
        self,
        spec: InputSpec,
        *,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        mlp_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__(spec)
        n_cat = len(spec.static_cat_cardinalities)
        self.column_dim = dim // 8
        if n_cat:
            self.value_embedding = CategoricalEmbedding(
                spec.static_cat_cardinalities, dim - self.column_dim
            )
            self.column_embedding = nn.Parameter(torch.randn(n_cat, self.column_dim))
            self.transformer = nn.Sequential(
                *(TransformerLayer(dim, heads, attn_dropout, ff_dropout) for _ in range(depth))
            )
        else:  # no categorical columns: nothing to attend over, the model is an MLP
            self.value_embedding = None
            self.transformer = None
        n_summaries = len(SUMMARY_NAMES) * spec.n_features if spec.is_time_series else 0
        self.continuous_dim = spec.n_static_num + n_summaries
        self.continuous_norm = (
            nn.LayerNorm(self.continuous_dim)
            if self.continuous_dim >= MIN_FEATURES_FOR_LAYER_NORM
            else nn.Identity()
        )
        in_dim = n_cat * dim + self.continuous_dim
        if in_dim == 0:
            raise ValueError(
                f"TabTransformer has no inputs: the InputSpec {spec} has no features at all"
            )
        self.mlp = hidden_layers(in_dim, list(mlp_hidden), ff_dropout)
        self.penultimate_dim = int(mlp_hidden[-1]) if len(mlp_hidden) else in_dim
        self.head = nn.Linear(self.penultimate_dim, spec.n_classes)

    def continuous_features(self, batch: Batch) -> torch.Tensor:
        """(B, S + 6F) numeric statics and grid summaries, before the layer norm."""
        if not self.spec.is_time_series:
            return batch["static_num"]
        summaries = grid_summaries(batch["x"], batch["mask"])
        return torch.cat([batch["static_num"], summaries], dim=1)

    def penultimate(self, batch: Batch) -> torch.Tensor:
        """(B, penultimate_dim): the MLP's last hidden layer."""
        check_batch(batch, self.spec, "TabTransformer")
        parts = []
        if self.transformer is not None:
            values = self.value_embedding(batch["static_cat"])  # (B, C, dim - column_dim)
            columns = self.column_embedding.expand(values.shape[0], -1, -1)
            tokens = torch.cat([values, columns], dim=2)  # (B, C, dim)
            parts.append(self.transformer(tokens).flatten(1))
        parts.append(self.continuous_norm(self.continuous_features(batch)))
        return self.mlp(torch.cat(parts, dim=1))
