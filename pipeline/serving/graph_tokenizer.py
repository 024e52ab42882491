"""A BERT WordPiece ``tokenizer.json`` as core TensorFlow ops, so that a SavedModel can take raw text.

``graph_tokenizer(tokenizer_json, max_length)`` is a ``tf.Module`` whose ``tokenize`` takes strings (N,) and
gives ``(ids, mask)`` int32 (N, T), T the batch's longest sequence: the ids ``tokenizers`` gives for the same
file with truncation at ``max_length`` and no padding (``TokenizeFn``), padded with 0 on the right. Its tables
are resources of the module, so it saves with ``tf.saved_model.save`` or inside a ``keras.export.ExportArchive``
(``archive.track``).

How a batch is tokenised:

1. special tokens written in the raw text (``[CLS]``, ``[MASK]``, ...) are matched first, as ``tokenizers``
   matches them, and each is replaced by a control character of its own that stands alone as a word;
2. every code point becomes its normalised, pre-tokenised text through one table (kept, dropped, set apart by
   spaces, or replaced). The table is made when the module is built, by running the file's own normalizer and
   pre-tokenizer on each code point (``BertNormalizer`` and ``BertPreTokenizer`` work one character at a
   time). Rules rebuilt with Python's ``unicodedata`` would differ on a few hundred code points: the Rust
   tables of ``tokenizers`` follow other Unicode versions;
3. the text is split on spaces into words, and only the words that can still fit are kept (each word gives at
   least one token);
4. WordPiece, all words at once: at each step every unfinished word takes the longest of its next pieces that
   is in the vocabulary (``##`` before a continuation); a word where none is, or longer than the file's
   ``max_input_chars_per_word``, is one unknown token;
5. the template's special tokens go around the first ``max_length`` minus their number of tokens.

The one known difference: ``tokenizers`` puts a whole text into canonical order (NFD) before it drops accents,
while the table decomposes each code point on its own, so two combining marks that are kept (spacing ones, not
accents) and written out of canonical order stay so in ``words``. The ids are the same whenever no vocabulary
entry holds such a mark (a word with one is then ``[UNK]`` in either order), as in all-MiniLM-L6-v2's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["TokenizerPlan", "plan_tokenizer", "graph_tokenizer", "unsupported", "UnsupportedTokenizerError", "KEEP",
           "SET_APART", "LOOK_UP"]

KEEP, SET_APART, LOOK_UP = 0, 1, 2  # what a code point becomes: itself, " itself ", its entry in the table
_UNICODE_SIZE = 0x110000
_SURROGATES = range(0xD800, 0xE000)


@dataclass(frozen=True)
class TokenizerPlan:
    """What the graph needs of a ``tokenizer.json``, as plain arrays; ``plan_tokenizer`` makes it.

    Code points: ``run_starts`` (sorted, from 0) and ``run_kinds`` give each code point's kind, ``KEEP``,
    ``SET_APART`` or ``LOOK_UP``; ``replaced`` holds the text of each ``LOOK_UP`` code point that becomes
    something (the others are dropped). ``specials``: special token text -> the control character standing for
    it (the longest first), whose ``vocabulary`` entry is the token's id; ``neutral`` replaces such characters
    found in the raw text (the normalizer drops them all, so the text reads the same)."""

    run_starts: np.ndarray
    run_kinds: np.ndarray
    replaced: dict[int, str]
    vocabulary: dict[str, int]
    specials: dict[str, str]
    neutral: str
    unk_id: int
    prefix: str
    max_chars_per_word: int
    longest_piece: int
    before: tuple[int, ...]
    after: tuple[int, ...]


class UnsupportedTokenizerError(ValueError):
    """A ``tokenizer.json`` the graph tokenizer cannot run (another model than WordPiece, say); the message says
    what."""


def unsupported(tokenizer_json: str) -> str | None:
    """Why the graph tokenizer cannot run ``tokenizer_json``, or None when it can (quick: no plan is made)."""
    from tokenizers import Tokenizer

    config = json.loads(tokenizer_json)
    try:
        _check_supported(config)
        normalizer = Tokenizer.from_str(tokenizer_json).normalizer
        _check_drops_controls([cp for cp in range(1, 32) if normalizer.normalize_str(chr(cp)) == ""], config)
    except UnsupportedTokenizerError as e:
        return str(e)
    return None


def _check_drops_controls(dropped: list[int], config: dict) -> None:
    if len(dropped) <= len(config.get("added_tokens", [])):
        raise UnsupportedTokenizerError(
            "tokenizer.json: its normalizer keeps control characters; the graph tokenizer needs "
            f"{len(config.get('added_tokens', [])) + 1} it drops")


def _check_supported(config: dict) -> None:
    kinds = {"model": "WordPiece", "normalizer": "BertNormalizer", "pre_tokenizer": "BertPreTokenizer",
             "post_processor": "TemplateProcessing"}
    for part, kind in kinds.items():
        found = (config.get(part) or {}).get("type")
        if found != kind:
            raise UnsupportedTokenizerError(f"tokenizer.json: {part} is {found}; the graph tokenizer supports {kind} "
                                            "only")
    for token in config.get("added_tokens", []):
        if token.get("normalized") or token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            raise UnsupportedTokenizerError(f"tokenizer.json: added token {token['content']!r} is matched after "
                                            "normalisation or with stripping; the graph tokenizer matches added "
                                            "tokens as written only")


def _template(post_processor: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids a single sequence gets before and after it (``[CLS] $A [SEP]``: (101,), (102,))."""
    ids = {name: tuple(token["ids"]) for name, token in post_processor["special_tokens"].items()}
    before, after, seen = [], [], False
    for piece in post_processor["single"]:
        if "Sequence" in piece:
            seen = True
        else:
            (before, after)[seen].extend(ids[piece["SpecialToken"]["id"]])
    return tuple(before), tuple(after)


def _code_point_texts(normalizer, pre_tokenizer) -> dict[int, str]:
    """Each code point's text after the normalizer and pre-tokenizer, words joined by single spaces and a space
    at a side that splits: between two ``x`` (a letter kept as it is), ``"."`` gives ``"x . x"``, so ``" . "``."""
    texts = {}
    for cp in range(_UNICODE_SIZE):
        if cp in _SURROGATES:
            continue
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(f"x{chr(cp)}x"))
        texts[cp] = " ".join(word for word, _ in words)[1:-1]
    return texts


def plan_tokenizer(tokenizer_json: str) -> TokenizerPlan:
    """The plan of a BERT WordPiece ``tokenizer.json`` (its text); ``ValueError`` names what is unsupported.

    Runs the file's normalizer and pre-tokenizer (``tokenizers``) on every code point: a few seconds."""
    from tokenizers import Tokenizer

    config = json.loads(tokenizer_json)
    _check_supported(config)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    texts = _code_point_texts(tokenizer.normalizer, tokenizer.pre_tokenizer)
    vocabulary = dict(config["model"]["vocab"])
    dropped = [cp for cp in range(1, 32) if texts[cp] == ""]
    _check_drops_controls(dropped, config)
    added = sorted((token["content"] for token in config.get("added_tokens", [])), key=len, reverse=True)
    specials = {token: chr(cp) for token, cp in zip(added, dropped, strict=False)}
    for token, char in specials.items():
        texts[ord(char)] = f" {char} "
        vocabulary[char] = {t["content"]: t["id"] for t in config["added_tokens"]}[token]

    kinds = np.full(_UNICODE_SIZE, LOOK_UP, np.int32)  # surrogates: dropped (never decoded from UTF-8)
    replaced = {}
    for cp, text in texts.items():
        char = chr(cp)
        if text == char:
            kinds[cp] = KEEP
        elif text == f" {char} ":
            kinds[cp] = SET_APART
        elif text:
            replaced[cp] = text
    starts = np.flatnonzero(np.diff(kinds, prepend=-1)).astype(np.int32)
    model = config["model"]
    prefix = model["continuing_subword_prefix"]
    longest = max(len(t) - len(prefix) if t.startswith(prefix) else len(t) for t in model["vocab"])
    before, after = _template(config["post_processor"])
    return TokenizerPlan(starts, kinds[starts], replaced, vocabulary, specials, chr(dropped[len(added)]),
                         int(vocabulary[model["unk_token"]]), prefix, int(model["max_input_chars_per_word"]),
                         longest, before, after)


def graph_tokenizer(tokenizer_json: str, max_length: int):
    """A ``tf.Module`` for a ``tokenizer.json`` (its text), with two ``tf.function``s of strings (N,):

    - ``tokenize(texts)`` -> ``(ids, mask)``, int32 (N, T), at most ``max_length`` tokens each;
    - ``words(texts)`` -> the words after normalisation and pre-tokenisation, a ragged (N, None) string
      (step 3 of the module docstring, before any word is cut), to compare with ``tokenizers``."""
    import tensorflow as tf

    plan = plan_tokenizer(tokenizer_json)
    room = max_length - len(plan.before) - len(plan.after)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room between the template's special tokens")
    module = tf.Module(name="graph_tokenizer")
    module.code_points = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(plan.replaced), tf.int32), tf.constant(list(plan.replaced.values()), tf.string)), "")
    module.vocabulary = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(plan.vocabulary), tf.string), tf.constant(list(plan.vocabulary.values()), tf.int32)), -1)
    run_starts, run_kinds = tf.constant(plan.run_starts), tf.constant(plan.run_kinds)
    stand_ins = "[" + "".join(f"\\x{ord(c):02x}" for c in plan.specials.values()) + "]"  # a regex class

    def normalised_words(texts):
        if plan.specials:
            texts = tf.strings.regex_replace(texts, stand_ins, plan.neutral)
        for token, char in plan.specials.items():
            texts = tf.strings.regex_replace(texts, re.escape(token), char)
        cps = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        flat = cps.flat_values
        kind = tf.gather(run_kinds, tf.searchsorted(run_starts, flat, side="right") - 1)
        char = tf.strings.unicode_encode(flat[:, None], "UTF-8")
        piece = tf.where(kind == KEEP, char, tf.where(kind == SET_APART, tf.strings.join([" ", char, " "]),
                                                      module.code_points.lookup(flat)))
        joined = tf.strings.reduce_join(cps.with_flat_values(piece), axis=1)
        words = tf.strings.split(joined, sep=" ")
        return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def words(texts):
        return normalised_words(texts)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def tokenize(texts):
        kept = normalised_words(texts)[:, :room]
        word, piece = _wordpiece(kept.flat_values, module.vocabulary, plan)
        n = tf.shape(texts, out_type=tf.int64)[0]
        tokens = tf.RaggedTensor.from_value_rowids(piece, tf.gather(kept.value_rowids(), word), nrows=n)[:, :room]
        tokens = tf.concat([_column(plan.before, n), tokens, _column(plan.after, n)], axis=1)
        ids = tokens.to_tensor(0)
        return ids, tf.sequence_mask(tokens.row_lengths(), tf.shape(ids)[1], tf.int32)

    module.words, module.tokenize = words, tokenize
    return module


def _column(ids: tuple[int, ...], n):
    """The same few ids for each of n rows, ragged (n, len(ids))."""
    import tensorflow as tf

    return tf.RaggedTensor.from_tensor(tf.tile(tf.constant([list(ids)], tf.int32), tf.stack([n, 1])), ragged_rank=1) \
        if ids else tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([n], tf.int64))


def _wordpiece(words, vocabulary, plan: TokenizerPlan):
    """WordPiece over words (M,) -> (word index, token id) pairs, (P,) each, in word order then piece order.

    Greedy longest match first, as ``tokenizers`` does it: one piece per loop step for every unfinished word,
    the longest of its next 1 .. ``longest_piece`` characters in the vocabulary."""
    import tensorflow as tf

    n_chars = tf.strings.length(words, unit="UTF8_CHAR")
    lengths = tf.range(1, plan.longest_piece + 1, dtype=tf.int32)[None, :]
    too_long = n_chars > plan.max_chars_per_word

    def step(start, failed, found_words, found_ids):
        active = tf.where((start < n_chars) & ~failed & ~too_long)[:, 0]
        at = tf.gather(start, active)
        shape = [tf.size(active), plan.longest_piece]
        candidates = tf.strings.substr(tf.broadcast_to(tf.gather(words, active)[:, None], shape),
                                       tf.broadcast_to(at[:, None], shape), tf.broadcast_to(lengths, shape),
                                       unit="UTF8_CHAR")
        candidates = tf.where(at[:, None] > 0, tf.strings.join([plan.prefix, candidates]), candidates)
        ids = vocabulary.lookup(candidates)
        fits = (ids >= 0) & (lengths <= (tf.gather(n_chars, active) - at)[:, None])
        best = tf.reduce_max(tf.where(fits, lengths, 0), axis=1)
        matched = best > 0
        best_id = tf.gather(ids, tf.maximum(best - 1, 0), batch_dims=1)
        where = active[:, None]
        start = tf.tensor_scatter_nd_add(start, where, best)
        failed = tf.tensor_scatter_nd_update(failed, where, ~matched)
        found_words = tf.concat([found_words, tf.boolean_mask(active, matched)], 0)
        found_ids = tf.concat([found_ids, tf.boolean_mask(best_id, matched)], 0)
        return start, failed, found_words, found_ids

    def unfinished(start, failed, found_words, found_ids):
        return tf.reduce_any((start < n_chars) & ~failed & ~too_long)

    start, failed, found_words, found_ids = tf.while_loop(
        unfinished, step, (tf.zeros_like(n_chars), tf.zeros_like(too_long), tf.zeros([0], tf.int64),
                           tf.zeros([0], tf.int32)),
        shape_invariants=(n_chars.shape, too_long.shape, tf.TensorShape([None]), tf.TensorShape([None])))
    unknown = failed | too_long
    keep = ~tf.gather(unknown, found_words)
    word = tf.concat([tf.boolean_mask(found_words, keep), tf.where(unknown)[:, 0]], 0)
    piece = tf.concat([tf.boolean_mask(found_ids, keep),
                       tf.fill([tf.reduce_sum(tf.cast(unknown, tf.int32))], plan.unk_id)], 0)
    order = tf.argsort(word, stable=True)
    return tf.gather(word, order), tf.gather(piece, order)
