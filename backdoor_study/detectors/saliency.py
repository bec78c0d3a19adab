"""Saliency: how concentrated a training stay's attribution is, compared with its class.

A backdoored model decides a poisoned stay by its trigger, so the attribution of that decision
(Captum, w.r.t. the normalised time grid ``x``) piles onto the trigger's variable (or a few
variable x hour cells), while a clean stay's decision spreads over many. Two steps, like every
detector here (model in, numbers out; no files):

1. ``attributions(model, batch, labels) -> (N, T, F)``: attribution of each stay's trained label
   (poisoned stays carry the target label) w.r.t. its grid, in batches of ``batch_size``.
2. ``score(attributions, labels) -> (N,)``: each stay's largest share of absolute attribution
   mass on one variable (``unit="variable"``) or one cell (``unit="cell"``), robustly
   standardised against its class (median and MAD of that largest share over the class). A
   per-variable z-score was tried and is worse (AUROC 0.93 vs 0.999 on MLP rare_value 5%): a
   variable that rarely matters has a tiny spread, so any stay leaning on it looks extreme.

``class_attribution_maps`` gives the class-average share of attribution over (hours x
variables), the figure that shows where a trigger sits.

Methods (``method``): ``integrated_gradients`` (Sundararajan et al. 2017; ``n_steps``
Gauss-Legendre points from the all-zeros grid, which after z-scoring is the training mean),
``input_x_gradient`` and ``saliency`` (one backward pass each). Captum computes them all; the
missingness trigger acts through the observation mask, which is not attributed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backdoor_study.detectors.base import Detector, per_class, require

METHODS = ("integrated_gradients", "input_x_gradient", "saliency")
UNITS = ("variable", "cell")


@dataclass
class SaliencyDetector(Detector):
    """Attribution concentration relative to the class.

    Parameters: ``method`` one of ``METHODS``; ``n_steps`` >= 1 (integrated gradients only);
    ``unit`` one of ``UNITS``; ``batch_size`` >= 1 stays per attribution call (integrated
    gradients evaluates ``batch_size x n_steps`` rows per forward pass).

    Measured on the synthetic rare_value 5% runs, one thread (AUROC, seconds per 1,000 stays):
    integrated gradients 4 steps MLP 0.999 / 0.3-0.7 s, LSTM 0.990 / 3.7 s; 8 steps the same
    AUROC at twice the time; input x gradient MLP 0.999 / 0.2-0.6 s, LSTM 0.988 / 1.9 s;
    plain saliency (|gradient|) MLP 0.89. ``unit="cell"`` is worse (LSTM 0.41-0.77): the
    trigger spans a 12-hour window, so its mass is spread over cells but sits on one variable.
    """

    method: str = "integrated_gradients"
    n_steps: int = 4
    unit: str = "variable"
    batch_size: int = 256

    name = "saliency"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.method in METHODS, "method", self.method, f"one of {METHODS}")
        require(self.unit in UNITS, "unit", self.unit, f"one of {UNITS}")
        for key in ("n_steps", "batch_size"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")

    # ------------------------------------------------------------------ attributions
    def attributions(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> np.ndarray:
        """(N, T, F) float32 attribution of ``labels`` (N,) w.r.t. ``batch["x"]`` (N, T, F).

        ``model`` is a :class:`~backdoor_study.models.base.ClinicalModel` (``forward(batch)``
        -> logits); ``batch`` a preprocessed batch (``data.preprocess``) on the model's device.
        The model is put in eval mode (dropout off) for the call and restored afterwards.
        """
        from captum.attr import InputXGradient, IntegratedGradients, Saliency

        x = batch["x"]
        if x.ndim != 3 or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(
                f"saliency needs a time grid batch['x'] of shape (N, T > 0, F > 0), got "
                f"{tuple(x.shape)}: static-only datasets have no variables x hours to attribute"
            )
        labels = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must be (N,) with N={x.shape[0]}, got {tuple(labels.shape)}")
        rest = {k: v for k, v in batch.items() if k != "x"}
        names = sorted(rest)

        def forward(x_part: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
            return model({"x": x_part, **dict(zip(names, others))})

        explainer = {
            "integrated_gradients": IntegratedGradients,
            "input_x_gradient": InputXGradient,
            "saliency": Saliency,
        }[self.method](forward)
        was_training = model.training
        model.eval()
        out = np.empty(tuple(x.shape), dtype=np.float32)
        try:
            for start in range(0, x.shape[0], self.batch_size):
                part = slice(start, start + self.batch_size)
                kwargs = {
                    "target": labels[part],
                    "additional_forward_args": tuple(rest[k][part] for k in names),
                }
                if self.method == "integrated_gradients":
                    kwargs["n_steps"] = self.n_steps
                elif self.method == "saliency":
                    kwargs["abs"] = True
                attr = explainer.attribute(x[part].detach().clone(), **kwargs)
                out[part] = attr.detach().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    # ------------------------------------------------------------------ scores
    def shares(self, attributions: np.ndarray) -> np.ndarray:
        """(N, F) per-variable or (N, T*F) per-cell share of each stay's |attribution| mass."""
        attributions = np.asarray(attributions, dtype=np.float64)
        if attributions.ndim != 3:
            raise ValueError(
                f"attributions must be (N, T, F) as returned by attributions(), got shape "
                f"{attributions.shape}"
            )
        mass = np.abs(attributions)
        units = mass.sum(axis=1) if self.unit == "variable" else mass.reshape(mass.shape[0], -1)
        total = units.sum(axis=1, keepdims=True)
        return np.divide(units, total, out=np.zeros_like(units), where=total > 0)

    def score(self, attributions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) scores from attributions (N, T, F) and labels (N,): how concentrated a stay's
        attribution is (its largest share of |attribution| mass on one variable or cell),
        robustly standardised against its class (median and MAD of that concentration)."""
        concentration = self.shares(attributions).max(axis=1, keepdims=True)
        return per_class(concentration, labels, lambda c: _robust_z(c[:, 0]))

    def class_attribution_maps(
        self, attributions: np.ndarray, labels: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Per class (int label): the (T, F) mean over its stays of each cell's share of the
        stay's |attribution| mass (hours x variables; each map sums to 1)."""
        attributions = np.asarray(attributions, dtype=np.float64)
        labels = np.asarray(labels)
        if attributions.ndim != 3 or labels.shape != (attributions.shape[0],):
            raise ValueError(
                f"attributions must be (N, T, F) and labels (N,), got {attributions.shape} "
                f"and {labels.shape}"
            )
        mass = np.abs(attributions)
        total = mass.sum(axis=(1, 2), keepdims=True)
        share = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
        return {int(c): share[labels == c].mean(axis=0) for c in np.unique(labels)}


def _robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 MAD) over one class; all zeros when the class has no spread."""
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    if spread <= 0:
        spread = float(np.std(values))
    return (values - centre) / spread if spread > 0 else np.zeros_like(values)
