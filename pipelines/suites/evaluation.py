"""Evaluation protocols, simple baselines on the same folds, and a markdown report comparing methods.

Protocols (every split by subject, through the project's one subject-level split, ``cache_schema.splits``):

- :func:`official_split`: the cohort's own train/test split, with a validation set carved (stratified) from
  train. On MMIST ccRCC the official test split holds only 16 deaths (4 in the CT subset of 239 patients), so one
  test AUROC swings by several points from a single patient: prefer the repeated k-fold protocol for claims.
- :func:`repeated_stratified_kfold`: n_repeats x n_splits stratified folds over every labelled sample (official
  train + test together), split by subject, each fold's validation set carved from its train part, stratified.

Baselines (:func:`run_baselines`): logistic regression, standardised, ``class_weight="balanced"`` (at a 15:1
imbalance an unweighted model predicts the majority class at 0.5, so Acc/mAR/mF1 would say nothing; AUROC and
AUPRC do not depend on the weighting much), L2 strength picked per fold from a small grid by validation AUROC,
then scored once on the fold's test set. Feature sets come from the manifest's small-model declarations:
``clinical_lr`` (categorical and ordinal fields one-hot with a missing column, numerical fields median-imputed
with a missing flag; any cohort with such fields), ``imaging_lr`` (the ``vector`` inputs, e.g. MMIST's shipped
CT 512 + WSI 1024 features, median-imputed with a has-vector flag), ``imaging_clinical_lr`` (both). A baseline
whose inputs the manifest does not declare does not apply (:func:`applicable_baselines` says why).

Metric names: Acc, AUROC, AUPRC, mAP (macro precision), mAR (macro recall), mF1 (macro F1), computed by the
project's one implementation (``train/metrics.py``); label 1 is the positive class (for ``vital12`` that is
survival), threshold 0.5 on the predicted probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ...cache_schema.atomic import atomic_write_text
from ...cache_schema.manifest import Manifest
from ...cache_schema.splits import split_subjects, subject_folds
from ...train import metrics as train_metrics

METRICS = ("Acc", "AUROC", "AUPRC", "mAP", "mAR", "mF1")
BASELINES = ("clinical_lr", "imaging_lr", "imaging_clinical_lr")
C_GRID = (0.001, 0.01, 0.1, 1.0)


@dataclass(frozen=True)
class Fold:
    """One evaluation fold: sample ids of its train, validation and test parts."""

    name: str
    repeat: int
    index: int
    train: list[str]
    val: list[str]
    test: list[str]


# ------------------------------------------------------------------------------------------------ protocols
def _labelled(manifest: Manifest, task: str) -> pd.DataFrame:
    labels = manifest.labels(task)
    frame = pd.DataFrame(
        {"sample_id": labels.index, "label": labels.to_numpy(), "subject_id": manifest.table["subject_id"].astype(str)}
    )
    frame["split"] = manifest.table["split"].to_numpy()
    return frame[frame["label"].notna()].reset_index(drop=True)


def _subject_labels(frame: pd.DataFrame) -> pd.Series:
    """One label per subject (positive if any of its samples is)."""
    return frame.groupby("subject_id", sort=True)["label"].max().astype(int)


def _carve_val(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) sample ids of ``frame``: whole subjects, stratified on the subject's label (the project's
    one subject-level split, :func:`adacomed.cache_schema.splits.split_subjects`)."""
    parts = split_subjects(
        frame["subject_id"].tolist(),
        {"train": 1.0 - val_fraction, "val": val_fraction},
        seed=seed,
        strata=frame["label"].tolist(),
        at_least_one=True,
    )
    ids = frame["sample_id"].to_numpy()
    return ids[parts == "train"].tolist(), ids[parts == "val"].tolist()


def official_split(manifest: Manifest, task: str = "vital12", val_fraction: float = 0.2, seed: int = 0) -> list[Fold]:
    """The manifest's own split as one fold; a declared ``val`` split is kept, else val is carved from train."""
    frame = _labelled(manifest, task)
    test = frame.loc[frame["split"] == "test", "sample_id"].tolist()
    if not test:
        raise ValueError(f"task {task!r}: the manifest has no labelled test samples")
    if (frame["split"] == "val").any():
        train = frame.loc[frame["split"] == "train", "sample_id"].tolist()
        val = frame.loc[frame["split"] == "val", "sample_id"].tolist()
    else:
        train, val = _carve_val(frame[frame["split"] == "train"], val_fraction, seed)
    return [Fold("official", 0, 0, train, val, test)]


def repeated_stratified_kfold(
    manifest: Manifest,
    task: str,
    n_splits: int = 5,
    n_repeats: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[Fold]:
    """n_repeats x n_splits folds over all labelled samples, stratified by label, split by subject; deterministic.

    Subjects are dealt into folds per repeat (:func:`~adacomed.cache_schema.splits.subject_folds`); each fold's
    validation set is carved from its train part the way the trainer carves one.
    """
    frame = _labelled(manifest, task)
    per_subject = _subject_labels(frame)
    if per_subject.value_counts().min() < n_splits:
        raise ValueError(
            f"task {task!r}: the rarer class has {per_subject.value_counts().min()} subjects, "
            f"fewer than n_splits={n_splits}"
        )
    folds: list[Fold] = []
    for repeat in range(n_repeats):
        fold_of = subject_folds(frame["subject_id"].tolist(), n_splits, seed * 1000 + repeat, frame["label"].tolist())
        for index in range(n_splits):
            train, val = _carve_val(frame[fold_of != index], val_fraction, seed * 1000 + repeat * 100 + index)
            test = frame.loc[fold_of == index, "sample_id"].tolist()
            folds.append(Fold(f"r{repeat}f{index}", repeat, index, train, val, test))
    return folds


# -------------------------------------------------------------------------------------------------- metrics
# train/metrics.py's names -> this module's (the report's) names.
METRIC_KEYS = {"acc": "Acc", "auroc": "AUROC", "auprc": "AUPRC", "mAP": "mAP", "mAR": "mAR", "mF1": "mF1"}
# Beside the paper's six in the suites' tables: balanced accuracy (for two classes equal to mAR, under its usual name).
EXTRA_KEYS = {"bacc": "BalAcc"}


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Acc, AUROC, AUPRC (label 1 positive), and macro precision/recall/F1 at ``threshold``: the project's one
    implementation (:func:`adacomed.train.metrics.binary_metrics`) under the report's names."""
    scores = train_metrics.binary_metrics(labels, probabilities, threshold)
    names = {**METRIC_KEYS, **EXTRA_KEYS}
    return {names[key]: value for key, value in scores.items()}


# ------------------------------------------------------------------------------------------------- features
def clinical_features(manifest: Manifest) -> pd.DataFrame:
    """Categorical/ordinal small inputs one-hot (plus a missing column), numerical ones with a missing flag."""
    table = manifest.table
    blocks: list[pd.DataFrame] = []
    for name, spec in manifest.info.small_inputs.items():
        column = table[spec.column]
        if spec.kind in ("categorical", "ordinal"):
            declared = spec.options.get("levels") or spec.options.get("categories") or []
            values = column.where(column.notna(), None).map(lambda v: None if v is None or v == "" else str(v))
            categories = list(dict.fromkeys([str(v) for v in declared] + sorted(values.dropna().unique())))
            block = pd.DataFrame({f"{name}={c}": (values == c).astype(float) for c in categories})
            block[f"{name}=missing"] = values.isna().astype(float)
            blocks.append(block)
        elif spec.kind == "numerical":
            numbers = pd.to_numeric(column, errors="coerce")
            blocks.append(pd.DataFrame({name: numbers, f"{name}_missing": numbers.isna().astype(float)}))
    if not blocks:
        raise ValueError("the manifest declares no categorical, ordinal or numerical small inputs")
    features = pd.concat(blocks, axis=1)
    features.index = manifest.sample_ids
    return features


def vector_features(manifest: Manifest) -> pd.DataFrame:
    """The ``vector`` small inputs read from their npz files (flattened), NaN plus a has-flag where absent."""
    table = manifest.table
    blocks: list[pd.DataFrame] = []
    for name, spec in manifest.info.small_inputs.items():
        if spec.kind != "vector":
            continue
        root = Path(spec.options.get("root", "."))
        root = root if root.is_absolute() else manifest.base_dir / root
        key = spec.options.get("key", "arr_0")
        rows: list[np.ndarray | None] = []
        for sample_id, pointer in zip(manifest.sample_ids, table[spec.column]):
            if pointer is None or (isinstance(pointer, float) and np.isnan(pointer)) or pointer == "":
                rows.append(None)
                continue
            try:
                with np.load(root / str(pointer), allow_pickle=False) as data:
                    rows.append(np.asarray(data[key], dtype=np.float32).reshape(-1))
            except (OSError, KeyError, ValueError) as exc:
                raise ValueError(f"sample {sample_id!r}: vector input {name!r} ({pointer}) unreadable: {exc}") from exc
        dims = {r.shape[0] for r in rows if r is not None}
        if len(dims) != 1:
            raise ValueError(f"vector input {name!r}: expected one dimension across samples, found {sorted(dims)}")
        dim = dims.pop()
        matrix = np.full((len(rows), dim), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            if row is not None:
                matrix[i] = row
        block = pd.DataFrame(matrix, columns=[f"{name}[{j}]" for j in range(dim)])
        block[f"{name}_present"] = np.array([r is not None for r in rows], dtype=float)
        blocks.append(block)
    if not blocks:
        raise ValueError("the manifest declares no vector small inputs")
    features = pd.concat(blocks, axis=1)
    features.index = manifest.sample_ids
    return features


# ------------------------------------------------------------------------------------------------ baselines
def _fit_predict(x: pd.DataFrame, labels: pd.Series, fold: Fold) -> np.ndarray:
    """Pick C on the fold's validation AUROC, return test probabilities of class 1."""
    y_train, y_val = labels[fold.train].to_numpy().astype(int), labels[fold.val].to_numpy().astype(int)
    best_auc, best_model = -1.0, None
    for c in C_GRID:
        model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
        )
        model.fit(x.loc[fold.train].to_numpy(), y_train)
        if len(np.unique(y_val)) < 2:  # no validation signal: keep the weakest regularisation
            best_model = model
            continue
        auc = roc_auc_score(y_val, model.predict_proba(x.loc[fold.val].to_numpy())[:, 1])
        if auc > best_auc:
            best_auc, best_model = auc, model
    assert best_model is not None
    return best_model.predict_proba(x.loc[fold.test].to_numpy())[:, 1]


def baseline_inputs(manifest: Manifest) -> dict[str, str]:
    """Which feature sets this manifest offers: ``clinical`` (tabular small inputs) and ``imaging`` (vector small
    inputs); a missing one maps to the reason its baselines do not apply."""
    kinds = {spec.kind for spec in manifest.info.small_inputs.values()}
    missing = {}
    if not kinds & {"categorical", "ordinal", "numerical"}:
        missing["clinical"] = "the manifest declares no categorical, ordinal or numerical small inputs"
    if "vector" not in kinds:
        missing["imaging"] = "the manifest declares no vector small inputs"
    return missing


def applicable_baselines(manifest: Manifest, methods: Sequence[str] = BASELINES) -> tuple[list[str], dict[str, str]]:
    """(the baselines this manifest can run, {skipped baseline: why})."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    missing = baseline_inputs(manifest)
    skipped = {method: reason for method in methods for needed, reason in missing.items() if needed in method}
    return [m for m in methods if m not in skipped], skipped


def run_baselines(
    manifest: Manifest, task: str, folds: Sequence[Fold], methods: Sequence[str] = BASELINES
) -> pd.DataFrame:
    """Per-fold metrics of each baseline: columns method, fold, repeat, index, n_test, n_test_neg + METRICS.

    Every baseline named must apply to this manifest (see :func:`applicable_baselines`).
    """
    runnable, skipped = applicable_baselines(manifest, methods)
    if skipped:
        method, reason = next(iter(skipped.items()))
        raise ValueError(f"baseline {method!r} does not apply: {reason}")
    labels = manifest.labels(task)
    feature_sets: dict[str, pd.DataFrame] = {}
    if any("clinical" in m for m in runnable):
        feature_sets["clinical"] = clinical_features(manifest)
    if any("imaging" in m for m in runnable):
        feature_sets["imaging"] = vector_features(manifest)
    rows = []
    for method in runnable:
        if method == "clinical_lr":
            x = feature_sets["clinical"]
        elif method == "imaging_lr":
            x = feature_sets["imaging"]
        else:
            x = pd.concat([feature_sets["imaging"], feature_sets["clinical"]], axis=1)
        for fold in folds:
            with threadpool_limits(limits=1):  # small matrices: BLAS threads only contend (10x slower on 2 cores)
                probabilities = _fit_predict(x, labels, fold)
            y_test = labels[fold.test].to_numpy().astype(int)
            rows.append(
                {
                    "method": method,
                    "fold": fold.name,
                    "repeat": fold.repeat,
                    "index": fold.index,
                    "n_test": len(y_test),
                    "n_test_neg": int((y_test == 0).sum()),
                    **binary_metrics(y_test, probabilities),
                }
            )
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------------- reports
def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of each metric per method: columns ``<metric>_mean``, ``<metric>_std``, ``n_folds``."""
    frame = df if "method" in df.columns else df.assign(method="method")
    metrics = [m for m in METRICS if m in frame.columns]
    grouped = frame.groupby("method", sort=False)
    out = pd.DataFrame(index=pd.Index(list(grouped.groups), name="method"))
    for metric in metrics:
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std(ddof=1).fillna(0.0)
    out["n_folds"] = grouped.size()
    return out


def _combine(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One long frame; a frame with several methods in a 'method' column becomes '<key>/<method>' rows."""
    parts = []
    for key, frame in results.items():
        if "fold" not in frame.columns:
            raise ValueError(f"results {key!r}: a per-fold frame needs a 'fold' column")
        if "method" in frame.columns and frame["method"].nunique() > 1:
            parts.append(frame.assign(method=key + "/" + frame["method"].astype(str)))
        else:
            parts.append(frame.assign(method=key))
    return pd.concat(parts, ignore_index=True)


def write_report(
    results: dict[str, pd.DataFrame], out: Path, primary: str = "AUROC", title: str = "Evaluation report"
) -> Path:
    """Write a markdown report comparing methods on the same folds; says which method is best by ``primary``.

    ``results`` maps a method name to its per-fold frame (columns ``fold`` and any of the metric names); any
    method's frame (a baseline, an AdaCoMed run) can be added. Only folds every method ran are compared.
    """
    combined = _combine(results)
    methods = list(dict.fromkeys(combined["method"]))
    folds_per_method = {m: set(combined.loc[combined["method"] == m, "fold"]) for m in methods}
    shared = set.intersection(*folds_per_method.values())
    if not shared:
        raise ValueError("the methods share no fold: they were not evaluated on the same folds")
    dropped = {m: len(f - shared) for m, f in folds_per_method.items() if f - shared}
    compared = combined[combined["fold"].isin(shared)]
    summary = summarise(compared)
    metrics = [m for m in METRICS if f"{m}_mean" in summary.columns]
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not in the results; have {metrics}")
    ranked = summary.sort_values(f"{primary}_mean", ascending=False)
    best = ranked.index[0]
    lines = [f"# {title}", "", f"{len(shared)} folds shared by {len(methods)} methods; primary metric {primary}.", ""]
    if dropped:
        lines += [f"Folds not run by every method were left out: {dropped}.", ""]
    lines += ["| method | " + " | ".join(metrics) + " | folds |", "|---" * (len(metrics) + 2) + "|"]
    for method, row in ranked.iterrows():
        cells = [f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}" for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {int(row['n_folds'])} |")
    pivot = compared.pivot_table(index="fold", columns="method", values=primary, aggfunc="first")[ranked.index]
    lines += ["", f"## Best: {best}", ""]
    lines.append(
        f"**{best}** has the highest mean {primary} ({ranked.iloc[0][f'{primary}_mean']:.3f} ± "
        f"{ranked.iloc[0][f'{primary}_std']:.3f})."
    )
    for other in ranked.index[1:]:
        diff = pivot[best] - pivot[other]
        wins = int((diff > 0).sum())
        spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
        lines.append(
            f"- vs {other}: mean {primary} difference {diff.mean():+.3f} (std {spread:.3f}); "
            f"{best} is better on {wins} of {diff.notna().sum()} folds."
        )
    if len(ranked) > 1:
        gap = ranked.iloc[0][f"{primary}_mean"] - ranked.iloc[1][f"{primary}_mean"]
        if gap < ranked.iloc[0][f"{primary}_std"]:
            lines.append(
                f"\nThe lead over {ranked.index[1]} ({gap:.3f}) is smaller than one fold-to-fold standard deviation: "
                "treat the top two as not clearly separated."
            )
    lines += ["", f"## Per-fold {primary}", "", "| fold | " + " | ".join(pivot.columns) + " |"]
    lines.append("|---" * (len(pivot.columns) + 1) + "|")
    for fold, row in pivot.iterrows():
        lines.append(f"| {fold} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    out = Path(out)
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".csv"), compared.to_csv(index=False))
    return out
