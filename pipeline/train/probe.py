"""The linear probe's regularisation, chosen as the literature chooses it (the CLIP paper's linear probes):
k-fold cross-validation on the training records over a parametric sweep of C, then one refit.

- the folds: each training record's fold comes from its key relative to its input root
  (``SplitRule.folds``), so the same data in another folder or bucket, in any order, gives the same folds;
- the sweep: C at 1e-6, 1e-4 ... 1e6, then the step halved around the best mean fold accuracy until it is an
  eighth of a decade (ties go to the stronger L2);
- each fit: ``heads.fit_logistic``, multinomial logistic regression with scikit-learn's objective
  (``C * sum(loss) + ||W||^2 / 2``) solved by SciPy's L-BFGS, warm-started in each fold from the nearest C
  already fitted there, to a gradient tolerance of ``FOLD_GTOL``, on features standardised by the fold's own
  records unless the user asks for raw ones. The head's held-out accuracy is checked against scikit-learn's
  ``StandardScaler`` + ``LogisticRegression`` swept the same way (``tests/pipeline/train/test_reproducible_heads.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.train import heads

__all__ = ["FOLDS", "CV_MAX_RECORDS", "CrossValidation", "cross_validate_c"]

FOLDS = 5
CV_MAX_RECORDS = 20_000  # above: C on the validation split (``in_memory.fit_linear``)
# A fold's fit is solved to this gradient tolerance (the head's own fits to 1e-8): on the digits its fold accuracies
# are within 0.001 of the tight solves' and the whole sweep takes a fifth of the time.
FOLD_GTOL = 1e-5


@dataclass
class CrossValidation:
    """The sweep's outcome: the chosen C and every fold's accuracy at each C tried."""

    best_c: float
    folds: int
    grid: dict = field(default_factory=dict)   # log10(C) -> [accuracy of each fold]

    def mean(self, log_c: float) -> float:
        return float(np.mean(self.grid[log_c]))

    def describe(self) -> dict:
        """What metrics.json records: the folds, the grid with each fold's score, the chosen C."""
        cs = sorted(self.grid)
        return {"selection": f"{self.folds}-fold cross-validation on the training records", "folds": self.folds,
                "fold_rule": "hash of the relative key, salted 'fold:SEED:'", "fold_gtol": FOLD_GTOL,
                "chosen_C": self.best_c,
                "grid": {f"{10.0 ** k:.6g}": {"mean": round(self.mean(k), 6),
                                              "folds": [round(s, 6) for s in self.grid[k]]} for k in cs}}


def cross_validate_c(x: np.ndarray, y: np.ndarray, n_classes: int, fold_of: np.ndarray,
                     sample_weight: np.ndarray | None = None, standardize: bool = False) -> CrossValidation:
    """C by k-fold cross-validation: ``fold_of`` numbers each record's fold; a fold that leaves no record to
    fit or none to score is not used (with ``standardize``, each fold's fit standardises by its own records).
    Raises ``ValueError`` when fewer than two folds can be used."""
    folds = [f for f in np.unique(fold_of) if 0 < (fold_of == f).sum() < len(y)]
    if len(folds) < 2:
        raise ValueError(f"{len(y)} training records are too few for cross-validation")
    fits: list[dict] = [{} for _ in folds]  # per fold: log10 C -> LinearFit, for warm starts
    grid: dict[float, list[float]] = {}

    def evaluate(log_c: float) -> float:
        accuracies = []
        for i, f in enumerate(folds):
            held, fitted = fold_of == f, fold_of != f
            nearest = min(fits[i], key=lambda k: abs(k - log_c), default=None)
            weights = None if sample_weight is None else sample_weight[fitted]
            fit = heads.fit_logistic(x[fitted], y[fitted], n_classes, 10.0 ** log_c, weights,
                                     init=fits[i][nearest] if nearest is not None else None, gtol=FOLD_GTOL,
                                     standardize=standardize)
            fits[i][log_c] = fit
            accuracies.append(float(np.mean(fit.predict_proba(x[held]).argmax(axis=1) == y[held])))
        grid[log_c] = accuracies
        return float(np.mean(accuracies))

    best_log_c, _ = heads.parametric_search(evaluate)
    return CrossValidation(10.0 ** best_log_c, len(folds), grid)
