"""Saliency: how much of a training stay's decision rests on one variable, compared with its class.

A backdoored model decides a poisoned stay by its trigger, so the attribution of that decision
(Captum, w.r.t. the normalised time grid ``x``) piles onto the trigger's variable (or a few
variable x hour cells), beyond what that variable carries for a clean stay of the same class.
Two steps, like every detector here (model in, numbers out; no files):

1. ``attributions(model, batch, labels) -> (N, T, F)``: attribution of each stay's trained label
   (poisoned stays carry the target label) w.r.t. its grid, in batches of ``batch_size``.
2. ``score(attributions, labels) -> (N,)``: per stay and unit the evidence for its label, minus
   the class's median of that unit; the score is the largest excess. Units: ``"window"``
   (default: one variable over a block of ``window_hours`` consecutive hours), ``"variable"``
   (summed over all hours) or ``"cell"`` (one variable x hour). ``evidence="positive"``
   (default) counts the positive attribution (what pushes towards the label: a trigger does),
   ``"share"`` each unit's share of the stay's absolute attribution mass (a concentration).

Measured on the calibrated cohort's rare_value 5% runs (detection AUROC, seeds 1 / 2 / 3, from
the runs of ``docs/results_detection.md``):

- integrated gradients (4 steps) with 6-hour windows, the default: MLP 0.998 / 0.995 / 0.986,
  LSTM 0.980 / 0.886 / 0.976;
- input x gradient with 6-hour windows: MLP 0.998 / 0.992 / 0.988, LSTM 0.985 / 0.937 / 0.667;
  summed over all hours (``unit=variable``, the previous default): MLP 0.992 / 0.958 / 0.918,
  LSTM 0.985 / 0.936 / 0.696. The one-point gradient misses the LSTM of seed 3, the path
  integral does not: most likely a saturated gate (near-zero gradient at the triggered input,
  the failure integrated gradients was made for; not checked further);
- windows beat the whole-stay sum because the trigger sits in 12 of 48 hours: over the whole
  stay its evidence is diluted by the hours where clean stays' HR matters. Single hours
  (``unit=cell``) are too fine (IG: MLP 0.968-0.987, LSTM 0.842-0.937); 6 h is not tuned to
  the trigger (12-hour windows and sliding windows scored within 0.01 of it);
- at 1%, where rare_value barely implants (LSTM ASR_flip 0.00), nothing attribution-based can
  find it: LSTM 0.20-0.23; MLP 0.69-0.93.
- Also tried and worse: attributing the observation mask as well (the mask carries no
  evidence: 0.24-0.50 on its own), spectral scores of the attribution maps (0.53-0.82), the
  class-standardised largest share, a per-unit z-score.

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

from backdoor_study.config import SaliencyDetectorConfig
from backdoor_study.detectors.base import Detector, per_class


@dataclass
class SaliencyDetector(SaliencyDetectorConfig, Detector):
    """Evidence on one variable (or cell) beyond the class's usual, from Captum attributions.

    Parameters: ``method`` one of ``config.SALIENCY_METHODS``; ``n_steps`` >= 1 (integrated gradients only);
    ``unit`` one of ``config.SALIENCY_UNITS``; ``window_hours`` >= 1 hours per window (``unit=window``); ``evidence`` one of ``config.SALIENCY_EVIDENCE``; ``batch_size`` >= 1 stays per
    attribution call (integrated gradients evaluates ``batch_size x n_steps`` rows per pass).

    Seconds per 1,000 stays, one thread, calibrated cohort: integrated gradients 4 steps MLP
    0.1 s, LSTM 1.0 s; input x gradient MLP 0.04 s, LSTM 0.3 s (the issue's target: <= 5 s).
    Parameters are checked when built; ``window_hours`` >= 1 (``unit=window`` only).
    """

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
                attr = explainer.attribute(x[part].detach().clone().requires_grad_(), **kwargs)
                out[part] = attr.detach().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    # ------------------------------------------------------------------ scores
    def evidence_per_unit(self, attributions: np.ndarray) -> np.ndarray:
        """(N, U) evidence of each stay per unit (see ``evidence``): U = F variables, T*F cells, or
        ceil(T / window_hours) * F variable x window blocks (the last block may be shorter)."""
        attributions = np.asarray(attributions, dtype=np.float64)
        if attributions.ndim != 3:
            raise ValueError(
                f"attributions must be (N, T, F) as returned by attributions(), got shape "
                f"{attributions.shape}"
            )
        n = attributions.shape[0]
        mass = np.abs(attributions) if self.evidence == "share" else np.clip(attributions, 0, None)
        if self.unit == "variable":
            units = mass.sum(axis=1)
        elif self.unit == "cell":
            units = mass.reshape(n, -1)
        else:  # variable x consecutive blocks of window_hours hours
            starts = np.arange(0, mass.shape[1], self.window_hours)
            units = np.add.reduceat(mass, starts, axis=1).reshape(n, -1)
        if self.evidence == "positive":
            return units
        total = units.sum(axis=1, keepdims=True)
        return np.divide(units, total, out=np.zeros_like(units), where=total > 0)

    def score(self, attributions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) scores from attributions (N, T, F) and labels (N,): the largest excess of a
        stay's evidence on one unit (variable or cell) over its class's median on that unit."""
        return per_class(self.evidence_per_unit(attributions), labels, _largest_excess)

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


def _largest_excess(evidence: np.ndarray) -> np.ndarray:
    """(n,) max over units of (evidence - the class's median evidence on that unit); (n, U) in."""
    return (evidence - np.median(evidence, axis=0)).max(axis=1)
