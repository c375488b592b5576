"""The paper's six metrics for a binary task: Acc, AUROC, AUPRC, mAP, mAR, mF1 (Table 5 of the supplement).

mAP, mAR and mF1 are macro averages over the two classes (precision, recall, F1 of class 0 and class 1 averaged),
not the mean average precision of detection; AUPRC is the average precision of the positive class. Beyond the
paper's six: balanced accuracy (``bacc``, the mean of the two classes' recalls, which for two classes is mAR under
its usual name), a Youden threshold beside the macro-F1 one, and the expected calibration error.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("acc", "auroc", "auprc", "mAP", "mAR", "mF1")
# Reported beside the paper's six (tables of runs and suites): balanced accuracy.
EXTRA_METRIC_NAMES: tuple[str, ...] = ("bacc",)


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


def auroc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic with tied scores counted half (as scikit-learn's
    ``roc_auc_score``); NaN with one class."""
    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(prob, kind="mergesort")
    ranks = np.empty(len(prob))
    sorted_prob = prob[order]
    starts = np.flatnonzero(np.r_[True, sorted_prob[1:] != sorted_prob[:-1]])
    ends = np.r_[starts[1:], len(prob)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based ranks of ties
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Average precision of the positive class, sum over thresholds of (recall step) x precision (scikit-learn's
    ``average_precision_score``, tied scores one threshold); NaN with one class."""
    positives = int(y_true.sum())
    if positives == 0 or positives == len(y_true):
        return float("nan")
    order = np.argsort(-prob, kind="mergesort")
    sorted_prob, sorted_true = prob[order], y_true[order]
    last_of_tie = np.r_[sorted_prob[1:] != sorted_prob[:-1], True]
    tp = np.cumsum(sorted_true)[last_of_tie]
    predicted = (np.flatnonzero(last_of_tie) + 1).astype(float)
    recall_steps = np.diff(np.r_[0.0, tp / positives])
    return float((recall_steps * tp / predicted).sum())


def _macro(y_true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over classes 0 and 1 (a class with no prediction has precision 0)."""
    precision, recall, f1 = [], [], []
    for cls in (0, 1):
        tp = float(((pred == cls) & (y_true == cls)).sum())
        predicted, actual = float((pred == cls).sum()), float((y_true == cls).sum())
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Scores of positive-class probabilities; the label is positive when ``prob >= threshold``.

    The project's one binary-metrics function (the evaluation reports use it under their own names). Plain
    numpy with scikit-learn's definitions (tested against it): it is called every epoch, and scikit-learn's
    argument checking alone cost a quarter of a small cohort's training time. AUROC and AUPRC are NaN when
    ``y_true`` holds one class only (they are undefined); the macro scores count a class with no prediction as
    precision 0 (scikit-learn's ``zero_division=0``).
    """
    y_true, prob = _check(y_true, prob)
    pred = (prob >= threshold).astype(int)
    precision, recall, f1 = _macro(y_true, pred)
    return {
        "acc": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "auroc": auroc(y_true, prob),
        "auprc": average_precision(y_true, prob),
        "mAP": precision,
        "mAR": recall,
        "mF1": f1,
        "bacc": recall,  # mean of the per-class recalls: balanced accuracy (for two classes, mAR)
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


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 on these (validation) predictions.

    Candidates and tie-breaking as :func:`choose_threshold` (closest to 0.5), so one class only keeps 0.5.
    """
    y_true, prob = _check(y_true, prob)
    candidates = np.unique(np.concatenate([prob, [0.5]]))
    pred = prob[None, :] >= candidates[:, None]  # [C, N]
    positive = y_true[None, :] == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    j = (pred & positive).sum(1) / n_pos + (~pred & ~positive).sum(1) / n_neg - 1.0
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def calibration_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-width probability bins: per bin the sample count, mean predicted probability and observed positive
    rate (NaN for an empty bin); the data of a reliability diagram. The last bin holds probability 1."""
    y_true, prob = _check(y_true, prob)
    which = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=prob, minlength=n_bins) / count
        observed = np.bincount(which, weights=y_true.astype(float), minlength=n_bins) / count
    return {"count": count.tolist(), "mean_prob": confidence.tolist(), "positive_rate": observed.tolist()}


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the positive-class probability: sum over equal-width bins of (bin share) x |positive rate - mean
    probability|; NaN without samples."""
    bins = calibration_bins(y_true, prob, n_bins)
    count = np.asarray(bins["count"])
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["positive_rate"]) - np.asarray(bins["mean_prob"]))
    return float(np.nansum(count / count.sum() * gap))
