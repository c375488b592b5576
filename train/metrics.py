"""The paper's six metrics for a binary task: Acc, AUROC, AUPRC, mAP, mAR, mF1 (Table 5 of the supplement).

mAP, mAR and mF1 are macro averages over the two classes (precision, recall, F1 of class 0 and class 1 averaged),
not the mean average precision of detection; AUPRC is the average precision of the positive class.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

METRIC_NAMES: tuple[str, ...] = ("acc", "auroc", "auprc", "mAP", "mAR", "mF1")


def _check(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).reshape(-1)
    prob = np.asarray(prob, dtype=float).reshape(-1)
    if y_true.shape != prob.shape:
        raise ValueError(f"{y_true.size} labels but {prob.size} probabilities")
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (drop excluded samples before scoring)")
    if not np.isfinite(prob).all():
        raise ValueError("probabilities contain NaN or inf")
    return y_true.astype(int), prob


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Scores of positive-class probabilities; the label is positive when ``prob >= threshold``.

    AUROC and AUPRC are NaN when ``y_true`` holds one class only (they are undefined); the macro scores count
    a class with no prediction as precision 0 (scikit-learn's ``zero_division=0``).
    """
    y_true, prob = _check(y_true, prob)
    pred = (prob >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    macro = {"average": "macro", "labels": [0, 1], "zero_division": 0}
    return {
        "acc": float(accuracy_score(y_true, pred)),
        "auroc": float(roc_auc_score(y_true, prob)) if both_classes else float("nan"),
        "auprc": float(average_precision_score(y_true, prob)) if both_classes else float("nan"),
        "mAP": float(precision_score(y_true, pred, **macro)),
        "mAR": float(recall_score(y_true, pred, **macro)),
        "mF1": float(f1_score(y_true, pred, **macro)),
    }


def choose_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The decision threshold that maximises macro F1 on these (validation) predictions.

    Candidates are 0.5 and every distinct probability (``prob >= t`` then splits the samples at each possible
    point); ties go to the candidate closest to 0.5, so an uninformative validation set keeps the default.
    Choose it on validation, then apply it unchanged to test.
    """
    y_true, prob = _check(y_true, prob)
    candidates = np.unique(np.concatenate([prob, [0.5]]))
    pred = prob[None, :] >= candidates[:, None]  # [C, N]
    positive = y_true[None, :] == 1
    tp = (pred & positive).sum(1)
    fp = (pred & ~positive).sum(1)
    fn = (~pred & positive).sum(1)
    tn = (~pred & ~positive).sum(1)
    f1_pos = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(candidates)), where=(2 * tp + fp + fn) > 0)
    f1_neg = np.divide(2 * tn, 2 * tn + fn + fp, out=np.zeros(len(candidates)), where=(2 * tn + fn + fp) > 0)
    macro_f1 = (f1_pos + f1_neg) / 2
    best = np.flatnonzero(np.isclose(macro_f1, macro_f1.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])
