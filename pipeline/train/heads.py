"""Classifier heads trained on cached features: a linear probe and a one-hidden-layer MLP.

``linear``: multinomial logistic regression, the protocol of the CLIP paper's linear probes. The inverse
L2 strength C (scikit-learn's convention: ``C * sum(loss) + ||W||^2 / 2``) is chosen on the validation split
by a parametric binary search over 1e-6 ... 1e6 that ends at 8 steps per decade; each fit is a full-batch
L-BFGS solve, warm-started from the nearest C already fitted; the winner is refitted on train + validation.
Sets too large for memory use the same objective with minibatches (``fit_linear_streaming``). With
``standardize`` each fit sees its records standardised by their own mean and standard deviation (scikit-learn's
``StandardScaler`` before ``LogisticRegression``; a column whose deviation is numerical noise is not blown up,
``standardizer``), so the L2 term weighs every feature alike whatever its scale; the scaling is folded into the
weights it returns, which take raw features.

``mlp``: Normalization -> Dense(hidden, relu) -> Dropout -> Dense, Adam, early stopping on validation loss.

Every head is returned as a Keras model from features to class probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinearFit", "standardizer", "fit_logistic", "parametric_search", "sweep_linear", "linear_head",
           "fit_mlp", "class_weights", "balanced_weights", "fit_linear_streaming", "INITIAL_CS"]

INITIAL_CS = tuple(10.0 ** e for e in (-6, -4, -2, 0, 2, 4, 6))
STD_FLOOR = 1e-4  # the least deviation a column is standardised by, relative to the columns' typical one


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """'balanced' weights per class: n / (n_classes * count), 0 for classes absent from ``y``."""
    return balanced_weights(np.bincount(y, minlength=n_classes))


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """``class_weights`` from the records per class alone (what a streamed pass counts)."""
    counts = np.asarray(counts, np.float64)
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)


@dataclass
class LinearFit:
    weights: np.ndarray   # (dim, n_classes)
    bias: np.ndarray      # (n_classes,)
    c: float
    iterations: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = x.astype(np.float64) @ self.weights + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of ``x``'s columns: the scale is the standard deviation, but at least ``STD_FLOOR`` of the
    columns' typical one (their root mean square), and 1 where every column is constant. A column that varies
    less is numerical noise, not a feature: musicnn's ``pool`` has hundreds of dead channels whose values differ
    in their last bits only (deviations near 1e-13 where the live ones are 1e-3 and up), and dividing by their own
    deviation would make a head's output swing on float rounding, which differs between two ways of computing
    the same vector."""
    x64 = np.asarray(x, np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    floor = STD_FLOOR * float(np.sqrt(np.mean(std ** 2))) if std.size else 0.0
    return mean, np.maximum(std, floor) if floor > 0 else np.ones_like(std)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, c: float, sample_weight: np.ndarray | None = None,
                 init: LinearFit | None = None, max_iter: int = 1000, gtol: float = 1e-8,
                 standardize: bool = False) -> LinearFit:
    """Minimise ``C * sum_i w_i * CE_i + ||W||^2 / 2`` (bias not penalised) with L-BFGS; with ``standardize``
    on ``x`` standardised by its own columns' mean and deviation, the result folded back to take raw ``x``
    (``W / s``, ``b - m W / s``)."""
    if standardize:
        mean, scale = standardizer(x)
        z = np.asarray(x, np.float32) - mean.astype(np.float32)
        z /= scale.astype(np.float32)
        if init is not None:  # the raw-space start, as the standardised problem sees it
            init = LinearFit(init.weights * scale[:, None], init.bias + mean @ init.weights, init.c, init.iterations)
        fit = fit_logistic(z, y, n_classes, c, sample_weight, init, max_iter, gtol)
        weights = fit.weights / scale[:, None]
        return LinearFit(weights, fit.bias - mean @ weights, c, fit.iterations)
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, dim = x.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    scale = 1.0 / (c * n)  # minimise the objective divided by C * n: same solution, well-scaled numbers
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    x32 = np.ascontiguousarray(x, np.float32)  # the two products dominate: float32 halves their cost

    def objective(theta):
        w = theta[: dim * n_classes].reshape(dim, n_classes)
        b = theta[dim * n_classes:]
        z = (x32 @ w.astype(np.float32)).astype(np.float64) + b
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
        log_p = z - log_norm
        loss = -(sw * (log_p * onehot).sum(axis=1)).sum() / n + 0.5 * scale * (w * w).sum()
        residual = (np.exp(log_p) - onehot) * (sw / n)[:, None]
        grad_w = (x32.T @ residual.astype(np.float32)).astype(np.float64) + scale * w
        grad_b = residual.sum(axis=0)
        return loss, np.concatenate([grad_w.ravel(), grad_b])

    theta0 = (np.zeros(dim * n_classes + n_classes) if init is None
              else np.concatenate([init.weights.ravel(), init.bias]))
    # Multi-threaded BLAS on products this small spends more time waking threads than multiplying
    # (4x slower on 2 cores for 1k x 1280); large sets keep every thread.
    with threadpool_limits(limits=1 if x32.size < 20_000_000 else None, user_api="blas"):
        # Tolerances as tight as scikit-learn's when asked to converge (tol=1e-8): at large C the mean loss
        # is tiny near the optimum, and looser ones stop far from it.
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": gtol, "ftol": 64 * np.finfo(float).eps,
                                   "maxls": 50})
    theta = result.x
    return LinearFit(theta[: dim * n_classes].reshape(dim, n_classes), theta[dim * n_classes:], c, int(result.nit))


@dataclass
class SweepResult:
    best_c: float
    scores: dict = field(default_factory=dict)   # C -> validation accuracy
    fits: dict = field(default_factory=dict)     # C -> LinearFit on the training split


def parametric_search(evaluate: Callable[[float], float], initial: Sequence[float] = INITIAL_CS,
                      steps_per_decade: int = 8) -> tuple[float, dict]:
    """CLIP's parametric binary search over log10(C): ``evaluate`` at ``initial``, then at the best +- a step
    that halves until it is 1/``steps_per_decade`` of a decade. Returns (best log10 C, {log10 C: score})."""
    scores: dict[float, float] = {}

    def at(log_c: float) -> None:
        key = round(log_c, 6)
        if key not in scores:
            scores[key] = evaluate(key)

    def best() -> float:
        return max(scores, key=lambda k: (scores[k], -k))  # ties: the stronger L2

    for c in initial:
        at(math.log10(c))
    step = (math.log10(initial[1]) - math.log10(initial[0])) / 2
    while step >= 1.0 / steps_per_decade - 1e-9:
        centre = best()
        at(centre - step)
        at(centre + step)
        step /= 2
    return best(), scores


def sweep_linear(x_train, y_train, x_val, y_val, n_classes: int, sample_weight=None,
                 initial: Sequence[float] = INITIAL_CS, steps_per_decade: int = 8,
                 score: Callable[[np.ndarray, np.ndarray], float] | None = None,
                 standardize: bool = False) -> SweepResult:
    """``parametric_search`` scored on one validation split, each fit warm-started from the nearest C."""
    score = score or (lambda y, p: float(np.mean(p.argmax(axis=1) == y)))
    result = SweepResult(best_c=initial[0])

    def evaluate(log_c: float) -> float:
        nearest = min(result.fits, key=lambda k: abs(k - log_c), default=None)
        fit = fit_logistic(x_train, y_train, n_classes, 10.0 ** log_c, sample_weight,
                           init=result.fits[nearest] if nearest is not None else None, standardize=standardize)
        result.fits[log_c] = fit
        return score(y_val, fit.predict_proba(x_val))

    best, result.scores = parametric_search(evaluate, initial, steps_per_decade)
    result.best_c = 10.0 ** best
    return result


def linear_head(weights: np.ndarray, bias: np.ndarray, name: str = "linear_head"):
    """A Keras model (features -> probabilities) holding a fitted linear probe."""
    import keras

    dim, n_classes = weights.shape
    features = keras.Input((dim,), name="features")
    dense = keras.layers.Dense(n_classes, activation="softmax", name="logistic")
    model = keras.Model(features, dense(features), name=name)
    dense.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


def _mlp(dim: int, n_classes: int, hidden: int, dropout: float, normalizer):
    import keras

    features = keras.Input((dim,), name="features")
    h = normalizer(features)
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(h)
    h = keras.layers.Dropout(dropout, name="dropout")(h)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="classes")(h)
    return keras.Model(features, probabilities, name="mlp_head")


def fit_mlp(train, validation, dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.5,
            max_epochs: int = 100, patience: int = 8, class_weight: dict | None = None, seed: int = 0,
            normalizer_data=None):
    """Train the MLP head; ``train``/``validation`` are (x, y) arrays or tf.data datasets of batches.

    Returns (model, history dict, epochs run, best epoch).
    """
    import keras

    keras.utils.set_random_seed(seed)
    normalizer = keras.layers.Normalization(name="standardize")
    normalizer.adapt(normalizer_data if normalizer_data is not None else train[0])
    model = _mlp(dim, n_classes, hidden, dropout, normalizer)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    if isinstance(train, tuple):
        history = model.fit(train[0], train[1], validation_data=validation, epochs=max_epochs, batch_size=256,
                            callbacks=[stop], class_weight=class_weight, verbose=0, shuffle=True)
    else:
        history = model.fit(train, validation_data=validation, epochs=max_epochs, callbacks=[stop],
                            class_weight=class_weight, verbose=0, shuffle=False)  # the dataset shuffles itself
    losses = history.history["val_loss"]
    return model, history.history, len(losses), int(np.argmin(losses)) + 1


def fit_linear_streaming(train_ds, val_ds, dim: int, n_classes: int, n_train: int,
                         initial: Sequence[float] = (1e-4, 1e-2, 1, 1e2, 1e4), epochs: int = 5,
                         class_weight: dict | None = None, seed: int = 0, refit_ds=None, normalizer_data=None):
    """The linear probe for sets that do not fit in memory: the same objective (per-example mean, L2 of
    ``1 / (2 C n)``), minimised with Adam on streamed minibatches; C chosen on the streamed validation
    split, then refitted on ``refit_ds`` (train + validation) when given. With ``normalizer_data`` (the
    training features, streamed once) the features are standardised first, by a ``Normalization`` layer.

    Returns (model, {C: validation accuracy}, best C).
    """
    import keras

    normalizer = None
    if normalizer_data is not None:
        normalizer = keras.layers.Normalization(name="standardize")
        normalizer.adapt(normalizer_data)

    def build(c: float):
        keras.utils.set_random_seed(seed)
        features = keras.Input((dim,), name="features")
        dense = keras.layers.Dense(n_classes, activation="softmax", name="logistic",
                                   kernel_regularizer=keras.regularizers.L2(0.5 / (c * n_train)))
        model = keras.Model(features, dense(features if normalizer is None else normalizer(features)),
                            name="linear_head")
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    scores = {}
    for c in initial:
        model = build(c)
        model.fit(train_ds, epochs=epochs, class_weight=class_weight, verbose=0, shuffle=False)
        scores[c] = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    best_c = max(scores, key=lambda k: (scores[k], -k))
    model = build(best_c)
    model.fit(refit_ds if refit_ds is not None else train_ds, epochs=epochs, class_weight=class_weight, verbose=0,
              shuffle=False)
    return model, scores, best_c
