"""MLP, LSTM, TCN and TabTransformer behind one interface (see :mod:`.base`)."""

from backdoor_study.models.base import Batch, ClinicalModel, InputSpec, build_model

__all__ = ["Batch", "ClinicalModel", "InputSpec", "build_model"]
