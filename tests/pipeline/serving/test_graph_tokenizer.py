"""The graph tokenizer gives the ids ``tokenizers`` gives, on hard texts, on real paragraphs and on every code point,
alone and after a SavedModel round trip."""

from __future__ import annotations

import numpy as np
import pytest

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    from pipeline.backbones.ports.minilm import resolve

    with open(resolve().assets["tokenizer"][0], encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def reference(tokenizer_json):
    """``tokenizers`` as extraction sets it up (``TokenizeFn``)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    return tokenizer


@pytest.fixture(scope="module")
def graph(tokenizer_json):
    from pipeline.serving.graph_tokenizer import graph_tokenizer

    return graph_tokenizer(tokenizer_json, MAX_LENGTH)


def token_lists(tokenize, texts) -> list[list[int]]:
    """Each text's ids without the padding, checking the mask marks exactly the real tokens."""
    import tensorflow as tf

    ids, mask = (t.numpy() for t in tokenize(tf.constant(texts, tf.string)))
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (len(texts), mask.sum(1).max())
    lengths = mask.sum(1)
    assert (mask == (np.arange(ids.shape[1])[None, :] < lengths[:, None])).all() and (ids[mask == 0] == 0).all()
    return [row[:n].tolist() for row, n in zip(ids, lengths, strict=True)]


def assert_same_ids(graph, reference, texts):
    expected = [e.ids for e in reference.encode_batch(texts)]
    got = token_lists(graph.tokenize, texts)
    wrong = [(text[:60], g, e) for text, g, e in zip(texts, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts differ; first: {wrong[0]}"


WORDS = ("the quick brown fox jumps over the lazy dog while tokenization of unaffable hyperparameters "
         "continues").split()
HARD = {
    "accents": "Café naïve résumé Ångström Øre façade jalapeño crème brûlée",
    "greek-and-cyrillic": "Ελληνικά ΣΟΦΊΑ ὁδός ΑΣ και Русский язык ЁЛКА Україна",
    "combining-marks": "e\u0301 a\u0308 n\u0303 Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d "
                       "l\u036e\u0312 \u0301alone",
    "multi-char-lowercase": "İstanbul ẞtraße ǅemal ῼ ﬃ ﬁne Ǆ ŉ",
    "decompose-to-several": "ǻ ṏ ḯ ǖ ẫ \u1e9b\u0323 한국어 텍스트",
    "cjk": "日本語のテキストと中文字符，还有㐀𠀀𪜀 and 丽",
    "full-width": "ＦＵＬＬ－ｗｉｄｔｈ　１２３！？ｶﾀｶﾅ",
    "emoji": "I ❤️ 🐍 and 👍🏽 with 👨‍👩‍👧 in 🇫🇷 🥰🫠",
    "tabs-newlines-controls": "tab\there\nnew\r\nline \x00nul \x07bell \x1b[31mred\x1b[0m \x85next \u2028sep "
                              "\x0bvt\x0cff",
    "zero-width": "zero\u200bwidth\u200cnon\u200djoiner \ufeffbom word\u2060joiner \u00adsoft\u00adhyphen",
    "punctuation-runs": "!!!???...---((([[[{{{}}}]]])))///\\\\@@@###$$$%%%^^^&&&***~~~```''\"\"«»„“¿¡…‽",
    "mixed": "COVID-19 e-mail x86_64 3.14159 $1,000.00 C++ naïve@example.com https://docs.python.org/3/",
    "private-use-and-unassigned": "\ue000 pu\U000f0000a \u0378 x\U0001fb00y \U000e0001tag \U0010ffff",
    "special-tokens-written": "[CLS] [SEP] [MASK] [UNK] [PAD] a[CLS]b [cls] [CL\x01S] \x01\x02\x06 [[MASK]]",
    "empty": "",
    "whitespace-only": " \t\n\r \u3000\u00a0 ",
    "controls-only": "\x00\x01\u200b\ufeff",
    "word-of-100": "a" * 100,
    "word-of-101": "b" * 101,
    "long-word": "supercalifragilistic" * 8,
    "long-accented-word": "é" * 120,
    "long-word-of-pieces": "tokenization" * 8,
    "unknown-piece-in-word": "abc\u0378def",
    "marks-out-of-canonical-order": "a\u302e\u1b44b ok \U0001d16d\U0001d165",  # see the module docstring
    "400-words": " ".join(WORDS[i % len(WORDS)] for i in range(400)),
    "cut-inside-a-word": " ".join(["tokenization"] * 200),
    "400-unicode-words": " ".join(["Ελληνικά", "日本", "naïve", "🐍", "über", "—"][i % 6] for i in range(400)),
}


@pytest.mark.parametrize("text", HARD.values(), ids=HARD.keys())
def test_hard_texts_give_the_ids_of_tokenizers(graph, reference, text):
    assert_same_ids(graph, reference, [text])


def test_a_batch_of_hard_texts_gives_each_its_own_ids(graph, reference):
    texts = list(HARD.values())
    assert_same_ids(graph, reference, texts)
    ids = token_lists(graph.tokenize, [HARD["empty"], HARD["400-words"]])
    assert ids[0] == [101, 102] and len(ids[1]) == MAX_LENGTH and ids[1][-1] == 102


def pydoc_paragraphs() -> list[str]:
    """Real English prose with code in it: the paragraphs of Python's own help topics (``pydoc_data``)."""
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for _, text in sorted(topics.items()) for p in text.split("\n\n")]
    return [p for p in paragraphs if len(p) > 40][:600]


def test_real_paragraphs_give_the_ids_of_tokenizers(graph, reference):
    paragraphs = pydoc_paragraphs()
    assert len(paragraphs) == 600
    for i in range(0, len(paragraphs), 100):
        assert_same_ids(graph, reference, paragraphs[i:i + 100])


def code_point_texts(per_text: int = 60) -> list[str]:
    """Every code point but the surrogates, each as a word ``x?x`` (so that what it becomes beside a letter
    shows), ``per_text`` to a text: few enough tokens that nothing is cut."""
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    return [" ".join(f"x{chr(cp)}x" for cp in code_points[i:i + per_text])
            for i in range(0, len(code_points), per_text)]


def test_every_code_point_gives_the_words_and_ids_of_tokenizers(graph, reference):
    """The whole of Unicode, independently of how the graph's table was made: the words against the
    normalizer and pre-tokenizer of ``tokenizers``, the ids against its ``encode``."""
    import tensorflow as tf

    texts = code_point_texts()
    normalizer, pre_tokenizer = reference.normalizer, reference.pre_tokenizer
    expected = [[w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))] for t in texts]
    got = [[w.decode("utf-8") for w in row] for row in graph.words(tf.constant(texts)).to_list()]
    wrong = [(t[:40], g, e) for t, g, e in zip(texts, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} texts differ; first: {wrong[0]}"
    assert max(len(e.ids) for e in reference.encode_batch(texts[:200])) < MAX_LENGTH  # nothing cut
    for i in range(0, len(texts), 4000):
        assert_same_ids(graph, reference, texts[i:i + 4000])


def test_the_tokenizer_survives_a_saved_model_round_trip(graph, reference, tmp_path):
    import tensorflow as tf

    texts = [*HARD.values(), *pydoc_paragraphs()[:20]]
    tf.saved_model.save(graph, str(tmp_path / "tokenizer"))
    loaded = tf.saved_model.load(str(tmp_path / "tokenizer"))
    assert token_lists(loaded.tokenize, texts) == token_lists(graph.tokenize, texts)
    assert_same_ids(loaded, reference, texts)


def test_the_tokenizer_exports_inside_a_keras_export_archive(graph, reference, tmp_path):
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(graph)
    archive.add_endpoint("tokenize", lambda texts: dict(zip(("ids", "mask"), graph.tokenize(texts), strict=True)),
                         input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    archive.write_out(str(tmp_path / "archive"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "archive"))
    texts = list(HARD.values())
    out = loaded.signatures["tokenize"](texts=tf.constant(texts))
    assert [row[m == 1].tolist() for row, m in zip(out["ids"].numpy(), out["mask"].numpy(), strict=True)] == \
        [e.ids for e in reference.encode_batch(texts)]


def test_an_empty_batch_gives_empty_ids(graph):
    import tensorflow as tf

    ids, mask = graph.tokenize(tf.constant([], tf.string))
    assert ids.shape[0] == mask.shape[0] == 0


def test_sixty_four_texts_of_400_words_are_cut_at_the_longest_sequence(graph, reference):
    import tensorflow as tf

    prose = " ".join(pydoc_paragraphs()).split()
    texts = [" ".join(prose[i * 400:(i + 1) * 400]) for i in range(64)]
    ids, mask = graph.tokenize(tf.constant(texts))
    expected = [reference.encode(t).ids for t in texts]
    assert ids.shape == (64, MAX_LENGTH) and max(len(e) for e in expected) == MAX_LENGTH
    assert [row[:n].tolist() for row, n in zip(ids.numpy(), mask.numpy().sum(axis=1), strict=True)] == expected


@pytest.mark.parametrize("change, message", [
    ({"model": {"type": "BPE"}}, "model is BPE; the graph tokenizer supports WordPiece only"),
    ({"normalizer": None}, "normalizer is None; the graph tokenizer supports BertNormalizer only"),
    ({"pre_tokenizer": {"type": "Metaspace"}}, "pre_tokenizer is Metaspace"),
], ids=["bpe", "no-normalizer", "metaspace"])
def test_other_tokenizers_are_refused_naming_the_part(tokenizer_json, change, message):
    import json

    from pipeline.serving.graph_tokenizer import plan_tokenizer

    with pytest.raises(ValueError, match=message):
        plan_tokenizer(json.dumps({**json.loads(tokenizer_json), **change}))


def test_importing_the_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, pipeline.serving.graph_tokenizer; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
