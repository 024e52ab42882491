"""Length-aware batching of texts: the buckets, the bound on what waits, windows kept apart, and vectors that do
not depend on the batch a text lands in (the real minilm_l6, texts of a few to past 256 tokens)."""

from __future__ import annotations

import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from transforms.embed.model_inputs import bucket_length, length_buckets, pad_tokens
from transforms.embed.settings import EmbedSettings
from transforms.embed.text_batches import BatchByLengthFn, LengthBatcher, batch_by_length
from transforms.schema.elements import Record
from transforms.schema.fields import OutputSpec

BUCKETS = length_buckets(256)


# --- buckets and padding -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_length, per_doubling, buckets", [
    (256, 4, (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)),
    (256, 1, (16, 32, 64, 128, 256)),
    (200, 2, (16, 24, 32, 48, 64, 96, 128, 192, 200)),   # the longest sequence kept is always the last bucket
    (16, 4, (16,)),
    (8, 4, (8,)),
], ids=["default", "powers-of-two", "other-longest", "one-bucket", "below-shortest"])
def test_buckets_step_evenly_between_powers_of_two_up_to_the_longest_sequence_kept(max_length, per_doubling,
                                                                                   buckets):
    assert length_buckets(max_length, per_doubling=per_doubling) == buckets


@pytest.mark.parametrize("length, padded", [(1, 16), (16, 16), (17, 20), (100, 112), (129, 160), (256, 256),
                                            (300, 300)],
                         ids=["shortest", "on-a-bucket", "just-past", "middle", "past-a-power", "last",
                              "past-the-last"])
def test_a_length_pads_to_the_smallest_bucket_that_holds_it(length, padded):
    assert bucket_length(length, BUCKETS) == padded


def test_past_the_shortest_bucket_padding_is_under_a_quarter_of_a_sequence():
    assert all((bucket_length(n, BUCKETS) - n) / bucket_length(n, BUCKETS) < 0.25 for n in range(16, 257))


def test_padding_to_a_bucket_keeps_ids_and_masks_the_rest():
    ids, mask = pad_tokens([np.array([101, 7, 102], np.int32), np.arange(1, 22, dtype=np.int32)], BUCKETS)
    assert ids.shape == mask.shape == (2, 24) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[0, :4], [101, 7, 102, 0])
    np.testing.assert_array_equal(ids[1, :22], [*range(1, 22), 0])
    assert mask[0].tolist() == [1] * 3 + [0] * 21 and mask[1].tolist() == [1] * 21 + [0] * 3
    assert pad_tokens([np.arange(1, 22, dtype=np.int32)])[0].shape == (1, 21)  # no buckets: to the longest


# --- the batching rule -------------------------------------------------------------------------------------------

def _lengths(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(key, length) items, lengths spread over every bucket."""
    rng = random.Random(seed)
    return [(f"k{i}", rng.choice([rng.randint(1, 16), rng.randint(17, 64), rng.randint(65, 256)]))
            for i in range(n)]


def test_each_batch_holds_one_bucket_and_every_item_once():
    items = _lengths(500)
    batches = list(batch_by_length(items, lambda item: item[1], BUCKETS, batch_size=8))
    assert sorted(item for batch in batches for item in batch) == sorted(items)
    assert all(1 <= len(batch) <= 8 for batch in batches)
    assert all(len({bucket_length(n, BUCKETS) for _, n in batch}) == 1 for batch in batches)
    assert sum(len(batch) < 8 for batch in batches) <= len(BUCKETS)  # only the end of the input leaves part-batches


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_text_pads_to_its_own_bucket_whatever_order_the_texts_come_in(seed):
    items = _lengths(300)
    shuffled = random.Random(seed).sample(items, len(items))
    padded = {key: bucket_length(max(n for _, n in batch), BUCKETS)
              for batch in batch_by_length(shuffled, lambda item: item[1], BUCKETS, batch_size=8)
              for key, _ in batch}
    assert padded == {key: bucket_length(n, BUCKETS) for key, n in items}


def test_a_full_queue_goes_out_at_once():
    batcher = LengthBatcher(BUCKETS, batch_size=3)
    assert batcher.add("a", 10) == [] and batcher.add("b", 200) == [] and batcher.add("c", 12) == []
    assert batcher.add("d", 5) == [(None, ["a", "c", "d"])]
    assert batcher.held == 1 and batcher.drain() == [(None, ["b"])] and batcher.held == 0


@pytest.mark.parametrize("max_held", [1, 4, 10])
def test_no_more_than_max_held_items_ever_wait(max_held):
    batcher = LengthBatcher(BUCKETS, batch_size=8, max_held=max_held)
    out = []
    for i, (key, n) in enumerate(_lengths(400)):
        out += batcher.add(key, n, group=i % 7)   # seven windows open at once
        assert batcher.held <= max_held
    out += batcher.drain()
    assert sorted(key for _, batch in out for key in batch) == sorted(key for key, _ in _lengths(400))


def test_groups_never_share_a_batch():
    batcher = LengthBatcher(BUCKETS, batch_size=2)
    out = batcher.add("a", 10, group="w1") + batcher.add("b", 10, group="w2") + batcher.add("c", 10, group="w1")
    assert out == [("w1", ["a", "c"])] and batcher.drain() == [("w2", ["b"])]


@pytest.mark.parametrize("batch_size, max_held", [(0, None), (4, 0)], ids=["batch-size", "max-held"])
def test_bounds_below_one_are_refused(batch_size, max_held):
    with pytest.raises(ValueError, match="at least 1"):
        LengthBatcher(BUCKETS, batch_size, max_held)


# --- the DoFn in a pipeline ----------------------------------------------------------------------------------------

class _BatchInWindowFn(beam.DoFn):
    def process(self, batch, window=beam.DoFn.WindowParam):
        yield int(window.start), sorted(meta for meta, _ in batch), {bucket_length(len(ids), BUCKETS)
                                                                     for _, ids in batch}


def test_batches_keep_to_their_window_and_bucket():
    # (key, timestamp, length): windows of 10 s; keys a, b, c share window 0, d and e window 10.
    texts = [("a", 1, 5), ("b", 2, 100), ("c", 3, 9), ("d", 12, 7), ("e", 15, 120)]

    def check(batches):
        by_key = {key: (start, buckets) for start, keys, buckets in batches for key in keys}
        assert sorted(by_key) == ["a", "b", "c", "d", "e"], batches
        assert all(len(buckets) == 1 for _, _, buckets in batches), batches
        assert {k: start for k, (start, _) in by_key.items()} == {"a": 0, "b": 0, "c": 0, "d": 10, "e": 10}

    with TestPipeline() as p:
        batches = (p
                   | beam.Create(texts)
                   | beam.Map(lambda t: TimestampedValue((t[0], np.ones(t[2], np.int32)), t[1]))
                   | beam.WindowInto(FixedWindows(10))
                   | beam.ParDo(BatchByLengthFn(BUCKETS, batch_size=4))
                   | beam.ParDo(_BatchInWindowFn()))
        assert_that(batches, check)


# --- vectors through the real backbone ---------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all."
TEXTS = {  # from 3 tokens to past the model's 256
    "tiny": "Hi.",
    "short": "A short one.",
    "sentence": SENTENCE,
    "two": SENTENCE + " " + SENTENCE.upper(),
    "paragraph": " ".join([SENTENCE] * 4),
    "page": " ".join([SENTENCE] * 9),
    "pages": " ".join([SENTENCE] * 8),   # shares a bucket with "page", a few tokens shorter
    "long": " ".join([SENTENCE] * 30),
    "longer": " ".join([SENTENCE] * 40) + " The end.",
}
OUTPUTS = [OutputSpec("sentence", "sentence", "none", 384), OutputSpec("layer.3", "layer.3", "avg", 384)]


@pytest.fixture(scope="module")
def minilm():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("minilm_l6")


@pytest.fixture(scope="module")
def token_ids(minilm):
    from transforms.decode.tokenize import TokenizeFn

    fn = TokenizeFn(minilm)
    fn.setup()
    return {key: ids for key, text in TEXTS.items() for (_, ids) in fn.process(Record(key, text, None))}


@pytest.fixture(scope="module")
def unpadded(minilm, token_ids):
    """Each text's vectors, embedded alone and unpadded."""
    from transforms.embed.backbone import BackboneHandler

    model = BackboneHandler(minilm, EmbedSettings(OUTPUTS)).load_model()
    return {key: {name: v[0] for name, v in model.embed(pad_tokens([ids])).items()}
            for key, ids in token_ids.items()}


def test_the_texts_span_the_buckets_and_share_some(token_ids):
    lengths = {key: len(ids) for key, ids in token_ids.items()}
    assert min(lengths.values()) < 8 and max(lengths.values()) == 256  # cut at the model's 256
    assert len({bucket_length(n, BUCKETS) for n in lengths.values()}) >= 6
    for a, b in [("tiny", "short"), ("page", "pages")]:  # different lengths, one bucket: padded within a batch
        assert lengths[a] != lengths[b] and bucket_length(lengths[a], BUCKETS) == bucket_length(lengths[b], BUCKETS)


def test_bucketed_batches_give_each_text_its_unpadded_vectors(minilm, unpadded):
    from transforms.embed.extract import ExtractFeatures

    def check(embedded):
        got = {meta[0]: vectors for meta, vectors in embedded}
        assert sorted(got) == sorted(TEXTS)
        for key, vectors in got.items():
            for name, expected in unpadded[key].items():
                np.testing.assert_allclose(vectors[name], expected, atol=1e-5, rtol=0, err_msg=f"{key} {name}")

    order = random.Random(0).sample(sorted(TEXTS), len(TEXTS))
    with TestPipeline() as p:
        extracted = (p
                     | beam.Create([Record(key, TEXTS[key], None) for key in order])
                     | ExtractFeatures(minilm, EmbedSettings(OUTPUTS, batch_size=2)))
        assert_that(extracted["embedded"], check)
        assert_that(extracted["failed"], equal_to([]), label="no failures")


def test_bfloat16_dense_layers_keep_the_vectors_within_cosine_0_999(minilm, token_ids, unpadded):
    import keras

    from transforms.embed.backbone import BackboneHandler, load_in_precision

    model = BackboneHandler(minilm, EmbedSettings(OUTPUTS, precision="bfloat16")).load_model()
    for key, ids in token_ids.items():
        got = model.embed(pad_tokens([ids], BUCKETS))
        for name, expected in unpadded[key].items():
            vector = got[name][0]
            assert vector.dtype == np.float32
            assert vector @ expected / np.linalg.norm(vector) / np.linalg.norm(expected) >= 0.999, (key, name)
    layers = load_in_precision(minilm, ["sentence"], "bfloat16").layers
    assert {type(layer).__name__ for layer in layers if layer.compute_dtype == "bfloat16"} == {"Dense"}
    assert all(layer.compute_dtype == "float32" for layer in layers
               if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.Lambda)))


def test_a_text_backbone_refuses_float16(minilm):
    from transforms.embed.backbone import load_in_precision

    with pytest.raises(ValueError, match="float32 or bfloat16"):
        load_in_precision(minilm, ["sentence"], "float16")


def test_bfloat16_leaves_a_fused_activation_in_its_dense_layer_and_moves_the_others_to_float32():
    import keras

    from transforms.embed.backbone import load_in_precision

    def toy(layers):
        tokens, flat = keras.Input((None, 8)), keras.Input((8,))
        gelu = lambda t: keras.activations.gelu(t, approximate=False)  # noqa: E731
        return keras.Model([tokens, flat], {"tokens": keras.layers.Dense(4, activation=gelu, name="tokens")(tokens),
                                            "flat": keras.layers.Dense(4, activation=gelu, name="flat")(flat)})

    class ToyText:
        modality = "text"
        load = staticmethod(toy)

    values = np.linspace(-2, 2, 48, dtype=np.float32)
    x = [values.reshape(2, 3, 8), values[:16].reshape(2, 8)]
    model = load_in_precision(ToyText(), ["tokens", "flat"], "bfloat16")
    assert all(layer.compute_dtype == "bfloat16" for layer in model.layers if isinstance(layer, keras.layers.Dense))
    got = model(x)
    assert keras.backend.standardize_dtype(got["tokens"].dtype) == "float32"  # 3-D: activation after, in float32
    assert keras.backend.standardize_dtype(got["flat"].dtype) == "bfloat16"   # 2-D: fused with the product
