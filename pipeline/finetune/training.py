"""Training the top of a split backbone on cached cut activations: the linear probe (``fit_probe``) and the
fine-tuning of the top blocks with the head (``fine_tune``), plus the compiled calls both evaluate with
(``Networks``, ``map_rows``). ``pipeline.finetune.run`` reads the inputs and caches them; ``pipeline.finetune.modeldir``
writes MODELDIR."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline.finetune.cache import CachedSet
from pipeline.finetune.model import SplitBackbone
from pipeline.finetune.options import FinetuneConfig
from pipeline.finetune.splits import TrainingData
from pipeline.train import heads
from transforms.schema.fields import OutputSpec

__all__ = ["Networks", "Probe", "map_rows", "log_loss", "fit_probe", "fine_tune", "CROP_PAD"]

CROP_PAD = 16  # augmentation: reflect-pad by this many pixels, then crop back to the backbone's size


def _rows(cached: CachedSet, index: np.ndarray, bottom, rng=None, augment: str = "none") -> np.ndarray:
    """The cut's activations of ``cached``'s rows ``index``: from the cache, or the bottom run on the (augmented)
    images."""
    order = np.sort(index)  # a memmap reads sorted rows sequentially
    if cached.x is not None:
        rows = np.asarray(cached.x[order])
    else:
        images = np.asarray(cached.images[order])
        if rng is not None and augment != "none":
            images = _augment(images, rng, flips=augment == "flip-crop")
        rows = np.asarray(bottom(images), np.float32)
    return rows[np.argsort(np.argsort(index))]  # back in the order of ``index``


def _augment(images: np.ndarray, rng: np.random.Generator, flips: bool) -> np.ndarray:
    """Random crops (reflect-pad ``CROP_PAD``, crop back) and, with ``flips``, random horizontal flips."""
    n, size = len(images), images.shape[1]
    padded = np.pad(images, ((0, 0), (CROP_PAD, CROP_PAD), (CROP_PAD, CROP_PAD), (0, 0)), mode="reflect")
    out = np.empty_like(images)
    offsets = rng.integers(0, 2 * CROP_PAD + 1, (n, 2))
    flip = rng.random(n) < 0.5 if flips else np.zeros(n, bool)
    for i, (dy, dx) in enumerate(offsets):
        crop = padded[i, dy:dy + size, dx:dx + size]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


class Networks:
    """The compiled calls: cut activation -> pooled features (the top), and -> probabilities (top + head)."""

    def __init__(self, split: SplitBackbone, output: OutputSpec, head):
        import tensorflow as tf

        from transforms.embed.pooling import pool

        signature = [tf.TensorSpec([None, *split.cut_shape], tf.float32)]
        self.split, self.output, self.head = split, output, head

        @tf.function(input_signature=signature, autograph=False)
        def features(x):
            return pool(split.top(x, training=False), output.pooling)

        @tf.function(input_signature=signature, autograph=False)
        def probabilities(x):
            return head(pool(split.top(x, training=False), output.pooling), training=False)

        self.features, self.probabilities = features, probabilities


def map_rows(cached: CachedSet, index: np.ndarray, fn, bottom, batch_size: int) -> np.ndarray:
    out = [np.asarray(fn(_rows(cached, index[i:i + batch_size], bottom))) for i in range(0, len(index), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


@dataclass(frozen=True)
class Probe:
    """The head fine-tuning starts from: fitted here (``fit_probe``) or taken from ``--head-from``."""

    head: object
    hyperparameters: dict
    l2: float        # kept on the head's kernels while fine-tuning: the probe's own objective, per example
    seconds: float


def fit_probe(train_x, train_y, val_x, val_y, n_classes: int):
    """The linear probe, as ``featurebeam train`` fits it: C swept for validation accuracy; the fit on the train
    split kept (no refit on validation: fine-tuning trains on the same images). Fine-tuning starts from this very
    fit, so its epoch 0 is the probe that is reported and compared against. (Measured on scikit-learn's digits:
    starting instead from the sweep's fit of lowest validation log-loss, a weaker L2, gained nothing.)

    Returns (probe head, hyper-parameters)."""
    sweep = heads.sweep_linear(train_x, train_y, val_x, val_y, n_classes)
    best_key = round(float(np.log10(sweep.best_c)), 6)
    fit = sweep.fits[best_key]
    hyper = {"solver": "L-BFGS (full batch)", "C": sweep.best_c, "l2": 1.0 / sweep.best_c,
             "sweep": {f"{10.0 ** k:.6g}": sweep.scores[k] for k in sorted(sweep.scores)},
             "fitted_on": "train split (validation chose C)", "iterations": fit.iterations,
             "validationlog_loss": log_loss(val_y, fit.predict_proba(val_x)),
             "finetune_start": "this fit"}
    return heads.linear_head(fit.weights, fit.bias), hyper


def fine_tune(config: FinetuneConfig, nets: Networks, data: TrainingData, head_l2: float, log) -> dict:
    """Train ``nets``' top and head in place; returns the history. The weights of the epoch of lowest validation
    log-loss are restored (epoch 0: the probe, untouched), so a later epoch is kept only when it beats the probe
    there. ``head_l2``: the L2 on the head's kernels, the probe's own (0 for a head from ``--head-from``)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    variables = list(nets.split.top.trainable_weights) + list(nets.head.trainable_weights)
    step = _train_step(config, nets, head_l2, len(data.train.index))
    val_loss, val_acc = _validate(nets, data)
    history = {"epoch": [0], "loss": [None], "accuracy": [None], "val_loss": [val_loss], "val_accuracy": [val_acc],
               "seconds": [0.0]}
    # The epoch kept: lowest validation log-loss (ties: accuracy). On a few hundred validation images accuracy moves
    # by whole images and picked epochs by luck; the loss moves with every image's margin.
    best, best_epoch, best_weights, waited = (-val_loss, val_acc), 0, _snapshot(variables), 0
    for epoch in range(1, config.epochs + 1):
        start = time.monotonic()
        loss, accuracy = _train_epoch(step, data, config, rng)
        val_loss, val_acc = _validate(nets, data)
        seconds = time.monotonic() - start
        for name, value in (("epoch", epoch), ("loss", loss), ("accuracy", accuracy), ("val_loss", val_loss),
                            ("val_accuracy", val_acc), ("seconds", round(seconds, 3))):
            history[name].append(value)
        log(f"featurebeam finetune: epoch {epoch}: loss {loss:.4f}, validation log-loss {val_loss:.4f}, accuracy "
            f"{val_acc:.4f} ({seconds:.1f} s)")
        if (-val_loss, val_acc) > best:
            best, best_epoch, best_weights, waited = (-val_loss, val_acc), epoch, _snapshot(variables), 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    for variable, value in zip(variables, best_weights, strict=True):
        variable.assign(value)
    history["best_epoch"] = best_epoch
    return history


def _optimizers(config: FinetuneConfig, n_train: int) -> tuple:
    """Adam for the top at ``--learning-rate`` and for the head at ``--head-lr-factor`` times it. Each warms up
    over the first epoch, then decays (cosine): Adam's first full-size steps would knock the start off the probe's
    optimum before the gradients mean anything."""
    import keras

    steps = -(-n_train // config.batch_size)

    def schedule(lr):
        return keras.optimizers.schedules.CosineDecay(0.0, max(1, steps * (config.epochs - 1)), warmup_target=lr,
                                                      warmup_steps=steps)

    return (keras.optimizers.Adam(schedule(config.learning_rate)),
            keras.optimizers.Adam(schedule(config.learning_rate * config.head_lr_factor)))


def _train_step(config: FinetuneConfig, nets: Networks, head_l2: float, n_train: int):
    """One compiled training step on a batch of cut activations: returns (mean cross-entropy, predicted classes)."""
    import keras
    import tensorflow as tf

    from transforms.embed.pooling import pool

    split, head, pooling = nets.split, nets.head, nets.output.pooling
    top_vars, head_vars = list(split.top.trainable_weights), list(head.trainable_weights)
    kernels = [w for w in head_vars if "kernel" in w.path]
    opt_top, opt_head = _optimizers(config, n_train)
    opt_top.build(top_vars)
    opt_head.build(head_vars)
    l2 = tf.constant(head_l2, tf.float32)
    n_top = len(top_vars)
    dropout = config.dropout

    @tf.function(input_signature=[tf.TensorSpec([None, *split.cut_shape], tf.float32),
                                  tf.TensorSpec([None], tf.int64)], autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            features = pool(split.top(x, training=False), pooling)
            if dropout:  # on the head's input only: the top keeps training=False (BatchNorm frozen)
                features = tf.nn.dropout(features, rate=dropout)
            p = head(features, training=False)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p))
            total = loss + l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels]) if kernels else loss
        grads = tape.gradient(total, top_vars + head_vars)
        opt_top.apply(grads[:n_top], top_vars)
        opt_head.apply(grads[n_top:], head_vars)
        return loss, tf.argmax(p, axis=1)

    return step


def _train_epoch(step, data: TrainingData, config: FinetuneConfig, rng: np.random.Generator) -> tuple[float, float]:
    """One pass over the train rows in a random order; returns their mean loss and accuracy."""
    train = data.train
    order = rng.permutation(len(train.index))
    losses, correct = [], 0
    for i in range(0, len(order), config.batch_size):
        chosen = order[i:i + config.batch_size]
        x = _rows(train.cached, train.index[chosen], data.bottom, rng, config.augment)
        loss, predicted = step(x, train.y[chosen])
        losses.append(float(loss) * len(chosen))
        correct += int(np.sum(predicted.numpy() == train.y[chosen]))
    return sum(losses) / len(order), correct / len(order)


def _validate(nets: Networks, data: TrainingData) -> tuple[float, float]:
    """Validation log-loss and accuracy of the networks as they are now."""
    val = data.validation
    p = map_rows(val.cached, val.index, nets.probabilities, data.bottom, 256)
    return log_loss(val.y, p), float(np.mean(p.argmax(axis=1) == val.y))


def _snapshot(variables: list) -> list[np.ndarray]:
    return [v.numpy() for v in variables]
