"""Experiment suites over cached embeddings, each one command of ``adacomed-eval`` with one report.

``evaluation`` (folds, logistic-regression baselines, the comparison report), ``compare`` (AdaCoMed beside the
baselines on the same folds), ``runs`` (what every suite shares: independent, resumable runs in worker processes
or dask tasks, with a progress bar), ``stability``, ``data_ratio`` and ``ablation`` (the supplement's Table 5,
Figures 1-2 and Table 3 protocols), ``figures`` (their PNG plots) and ``cli`` (``adacomed-eval``).
"""
