"""How visible a trigger is in the data itself, before any model: its side channels, as AUROCs.

A trigger that a simple data-quality check would catch is not a stealthy backdoor, however well it
implants. :func:`trigger_stealth` measures that check: a logistic regression separating triggered
from clean test stays, cross-validated, once on the observation mask alone and once on the values
alone (forward-filled, z-scored with the clean training statistics, numeric statics included: what
the models see). 0.5 means the channel shows nothing; 1.0 means it gives every triggered stay away
(e.g. a missingness trigger leaving labs unobserved all stay, which no clean stay shows).

Half of the test stays, drawn at random from both classes, are stamped and the other half left
clean, so each stay appears once and the label of the stay cannot stand in for the trigger. This
module reads no files and changes nothing it is given.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backdoor_study.data.preprocess import Preprocessor
from backdoor_study.data.schema import ClinicalDataset
from backdoor_study.metrics import NAN, auroc
from backdoor_study.poison.triggers import NoTrigger, Trigger

__all__ = ["STEALTH_KEYS", "trigger_stealth"]

#: keys of :func:`trigger_stealth`'s result
STEALTH_KEYS = ("stealth_mask_auroc", "stealth_values_auroc")


def trigger_stealth(
    ds: ClinicalDataset,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    trigger: Trigger,
    *,
    seed: int = 0,
    folds: int = 5,
) -> dict[str, float]:
    """Cross-validated AUROC of a logistic regression telling triggered from clean test stays.

    ``trigger`` must be fitted (on the clean training split); ``ds`` is the CLEAN dataset,
    ``train_idx`` / ``test_idx`` positions into it (the preprocessing statistics come from
    ``train_idx``). Returns ``stealth_mask_auroc`` (features: the (T x F) observation mask) and
    ``stealth_values_auroc`` (features: the (T x F) preprocessed values and the numeric statics),
    each from ``folds``-fold stratified cross-validated probabilities. A feature set that is empty
    (no time steps: the mask of a static table) or a trigger that stamps nothing (``NoTrigger``)
    gives NaN.
    """
    if isinstance(trigger, NoTrigger):
        return dict.fromkeys(STEALTH_KEYS, NAN)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if test_idx.size < 2 * folds:
        raise ValueError(
            f"test_idx holds {test_idx.size} stays; stealth needs at least 2 x folds={folds}"
        )
    rng = np.random.default_rng(seed)
    stamped = np.sort(rng.permutation(test_idx)[: test_idx.size // 2])
    is_triggered = np.isin(test_idx, stamped).astype(np.int64)
    batch = Preprocessor().fit(ds, train_idx).transform(trigger.apply(ds, stamped), test_idx)
    n = test_idx.size
    features = {
        "stealth_mask_auroc": batch["mask"].numpy().reshape(n, -1),
        "stealth_values_auroc": np.concatenate(
            [batch["x"].numpy().reshape(n, -1), batch["static_num"].numpy()], axis=1
        ),
    }
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = {}
    for key, x in features.items():
        if x.shape[1] == 0:
            out[key] = NAN
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        proba = cross_val_predict(model, x, is_triggered, cv=cv, method="predict_proba")
        out[key] = auroc(is_triggered, proba)
    return out
