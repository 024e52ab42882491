"""The README's Python snippets run as written, on a real feature set."""

import os
import re
import subprocess
import sys

import numpy as np

from tests.conftest import REPO
from tests.featuresets import blobs, write_feature_set


def _python_block_after(heading: str) -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_reading_it_back_runs_and_reads_every_record(tmp_path):
    keys, labels, x = blobs(7, ["cat", "dog"], dim=1280)
    write_feature_set(str(tmp_path / "features-out"), keys, labels, x, shard_sizes=[4, 3])
    snippet = _python_block_after("Reading it back:")
    probe = snippet + "\n        print(record.key, record.label, record.vectors['features.18'].shape, " \
                      "float(record.vectors['features.18'][0]))\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == keys and [r[1] for r in rows] == labels
    assert all(r[2] == "(1280,)" for r in rows)
    assert np.allclose([float(r[3]) for r in rows], x[:, 0], atol=1e-6)


def test_the_parquet_one_liners_read_the_shards(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.tools.export import ExportConfig, run_export

    keys, labels, x = blobs(9, ["cat", "dog"], dim=8)
    write_feature_set(str(tmp_path / "tfrecord"), keys, labels, x, shard_sizes=[4, 5])
    run_export(ExportConfig.create(str(tmp_path / "tfrecord"), "parquet", str(tmp_path / "features-out")),
               PipelineOptions(["--runner=FnApiRunner"]))
    lines = _python_block_after("### Parquet, for pandas").strip().splitlines()
    probe = "import duckdb, pandas, polars\n" + "".join(
        f"print(sorted({line.split('#')[0].strip()}['key']))\n" for line in lines)
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [str(sorted(keys))] * 3
