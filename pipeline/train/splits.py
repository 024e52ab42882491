"""Which records validate, decided by the data and not by where it lives: ``SplitRule``.

1. **The set's own split column**, when it names validation records (``validation``, ``val`` or ``dev``, any
   case): those validate and every other record trains. Records it names ``test`` are held out from training
   and validation alike, under either rule.
2. Otherwise **a hash of each key relative to its input root** (the folder, manifest, shard or table the
   record was read from: a manifest's ``inputs``), salted with ``--seed``: the same relative name in another
   folder, bucket or temporary directory lands in the same split, and another seed draws another split on
   purpose. The same hash, salted again, numbers the cross-validation folds of the training records.

The rule is TensorFlow string ops, so the in-memory table and the streamed ``tf.data`` pipeline apply one and
the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SplitRule", "split_rule", "input_roots", "TRAIN", "VALIDATION", "TEST", "VALIDATION_NAMES", "TEST_NAMES",
           "HASH_BUCKETS"]

TRAIN, VALIDATION, TEST = 0, 1, 2
VALIDATION_NAMES = ("validation", "val", "dev")
TEST_NAMES = ("test",)
HASH_BUCKETS = 10_000


@dataclass(frozen=True)
class SplitRule:
    """``fraction`` of the records validate (hash rule); ``roots``: the input roots keys are made relative to,
    longest first; ``by_column``: the set's split column decides instead."""

    fraction: float
    seed: int = 0
    roots: tuple[str, ...] = ()
    by_column: bool = False

    def describe(self) -> dict:
        """What metrics.json records of the rule: enough to draw the same split again."""
        held_out = {"test": f"records whose split is one of {list(TEST_NAMES)}"}
        if self.by_column:
            return {"rule": "the feature set's split column", "validation": list(VALIDATION_NAMES), **held_out,
                    "train": "every other record"}
        return {"rule": "hash of the key relative to its input root", "seed": self.seed, "fraction": self.fraction,
                "hash": f"tf Fingerprint64 of 'SEED:relative key', {HASH_BUCKETS} buckets",
                "roots": list(self.roots), **held_out}

    def tf_relative(self, keys):
        """Each key without the longest input root it starts with (and the ``/`` after it)."""
        import tensorflow as tf

        relative, matched = keys, tf.zeros_like(keys, dtype=tf.bool)
        for root in self.roots:
            prefix = root.rstrip("/") + "/"
            n = len(prefix.encode("utf-8"))
            here = tf.logical_and(tf.logical_not(matched), tf.equal(tf.strings.substr(keys, 0, n), prefix))
            start = tf.where(here, n, 0)
            relative = tf.where(here, tf.strings.substr(keys, start, tf.fill(tf.shape(start), -1)), relative)
            matched = tf.logical_or(matched, here)
        return relative

    def tf_bucket(self, keys, salt: str = ""):
        """A stable bucket in ``[0, HASH_BUCKETS)`` of each relative key, salted by the seed (and ``salt``)."""
        import tensorflow as tf

        return tf.strings.to_hash_bucket_fast(f"{salt}{self.seed}:" + self.tf_relative(keys), HASH_BUCKETS)

    def tf_split(self, keys, splits):
        """``TRAIN``, ``VALIDATION`` or ``TEST`` (int32) per record, from its key and split (b"" when none).
        A record whose split is ``test`` is held out whatever the rule."""
        import tensorflow as tf

        name = tf.strings.lower(tf.strings.strip(splits))
        is_test = tf.reduce_any(tf.equal(name[:, None], tf.constant(TEST_NAMES)[None, :]), axis=1)
        if self.by_column:
            is_val = tf.reduce_any(tf.equal(name[:, None], tf.constant(VALIDATION_NAMES)[None, :]), axis=1)
        else:
            is_val = self.tf_bucket(keys) < int(round(self.fraction * HASH_BUCKETS))
        return tf.where(is_test, TEST, tf.where(is_val, VALIDATION, TRAIN))

    def split_of(self, keys: Sequence[str], splits: Sequence[str | None] | None = None) -> np.ndarray:
        """``tf_split`` on Python keys and splits (None: no split)."""
        import tensorflow as tf

        if len(keys) == 0:
            return np.zeros(0, np.int32)
        names = [s or "" for s in splits] if splits is not None else [""] * len(keys)
        return self.tf_split(tf.constant(list(keys), tf.string), tf.constant(names, tf.string)).numpy()

    def relative_keys(self, keys: Sequence[str]) -> np.ndarray:
        """``tf_relative`` on Python keys, as str."""
        import tensorflow as tf

        if len(keys) == 0:
            return np.zeros(0, object)
        relative = self.tf_relative(tf.constant(list(keys), tf.string)).numpy()
        return np.array([k.decode("utf-8") for k in relative], dtype=object)

    def folds(self, keys: Sequence[str], k: int) -> np.ndarray:
        """A cross-validation fold in ``[0, k)`` per key, from its relative key (order-free)."""
        import tensorflow as tf

        if len(keys) == 0:
            return np.zeros(0, np.int64)
        return self.tf_bucket(tf.constant(list(keys), tf.string), salt="fold:").numpy() % k


def input_roots(specs: Sequence) -> tuple[str, ...]:
    """The roots of ``InputSpec``s (or their JSON), longest first: where each input's relative keys start."""
    roots = {(s.get("label_root") if isinstance(s, dict) else s.root) or "" for s in specs}
    return tuple(sorted((r.rstrip("/") for r in roots if r.rstrip("/")), key=lambda r: (-len(r), r)))


def split_rule(manifests: Sequence, fraction: float, seed: int = 0) -> SplitRule:
    """The rule for feature sets of these manifests: their split column where one names validation records,
    else the hash of keys relative to the roots their inputs were read from."""
    names = {str(s).strip().lower() for m in manifests for s in m.splits}
    roots = input_roots([spec for m in manifests for spec in (m.inputs or {}).get("specs", [])])
    return SplitRule(fraction, seed, roots, by_column=bool(names & set(VALIDATION_NAMES)))
