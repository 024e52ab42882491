"""The extraction job on a Beam runner: contents, counts, shards, and loading the model once per process."""

from __future__ import annotations

import dataclasses
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import build_extraction, run_extraction
from tests.fakes import MEAN_COLOUR, MeanColourBackbone, load_pids
from transforms.decode.images import decode_image
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.schema.example import read_records, tf_feature_description
from transforms.schema.fields import KEY, LABEL
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner"]
TWO_PROCESSES = ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """40 distinct flat-colour images in two classes: their mean colour is known exactly."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    expected = {}
    for i in range(40):
        label = "even" if i % 2 == 0 else "odd"
        colour = (i * 6, 255 - i * 5, (i * 37) % 256)
        path = root / label / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (48 + i, 40), colour).save(path)
        expected[str(path)] = (label, np.array(colour, np.float32))
    return root, expected


def _config(tmp_path, inputs, backbone, batch_size=2, outputs=(MEAN_COLOUR,)):
    return ExtractConfig(inputs=tuple(inputs), output=str(tmp_path / "out"), backbone=backbone,
                         embed=EmbedSettings(outputs, batch_size=batch_size, threads=1), records_per_shard=1000,
                         overwrite=False)


def _read_all(root):
    manifest = read_manifest(root)
    records = [r for path in shard_paths(root, manifest) for r in read_records(path, manifest.outputs)]
    return manifest, records


@pytest.mark.parametrize("runner_flags", [IN_PROCESS, TWO_PROCESSES], ids=["1-worker", "2-worker-processes"])
def test_pipeline_writes_every_image_once_with_its_label_and_vector(tmp_path, many_images, runner_flags, worker_env):
    root, expected = many_images
    backbone = MeanColourBackbone(str(tmp_path / "loads.log"))
    config = _config(tmp_path, [InputSpec.directory(str(root))], backbone)
    manifest = run_extraction(config, PipelineOptions(runner_flags))

    manifest, records = _read_all(config.output)
    assert manifest.counts == {"inputs": 40, "embedded": 40, "failed": 0, "duplicates": 0}
    assert manifest.labels == ("even", "odd")
    assert sorted(r.key for r in records) == sorted(expected)
    for r in records:
        label, colour = expected[r.key]
        assert r.label == label
        np.testing.assert_allclose(r.vectors["pixels"], colour, atol=1e-4)


def test_backbone_loads_once_per_worker_process_not_per_batch(tmp_path, many_images, worker_env):
    root, _ = many_images
    log = str(tmp_path / "loads.log")
    config = _config(tmp_path, [InputSpec.directory(str(root))], MeanColourBackbone(log), batch_size=2)
    p = beam.Pipeline(options=PipelineOptions(TWO_PROCESSES))
    build_extraction(p, config)
    result = p.run()
    result.wait_until_finish()

    pids = load_pids(log)
    assert 1 <= len(pids) <= 2, pids                 # at most one load per worker process ...
    assert len(set(pids)) == len(pids), pids          # ... and never twice in the same process
    assert os.getpid() not in pids                    # the launcher never builds the model
    batches = result.metrics().query(MetricsFilter().with_name("inference_batch_latency_micro_secs"))
    n_batches = sum(d.committed.count for d in batches["distributions"])
    assert n_batches >= 20 > len(pids)                # 40 images in batches of at most 2


@pytest.mark.parametrize("copies", [1, 2])
def test_model_copies_fix_how_many_models_a_machine_loads(tmp_path, many_images, worker_env, copies):
    """--model-copies N (the GPU default is 1): N loads per machine, whatever the number of worker processes
    (without it, each process that gets work loads its own: test_backbone_loads_once_per_worker_process...)."""
    root, expected = many_images
    log = str(tmp_path / "loads.log")
    config = _config(tmp_path, [InputSpec.directory(str(root))], MeanColourBackbone(log))
    config = dataclasses.replace(config, embed=dataclasses.replace(config.embed, model_copies=copies))
    manifest = run_extraction(config, PipelineOptions(TWO_PROCESSES))

    pids = load_pids(log)
    assert len(pids) == copies, pids
    assert os.getpid() not in pids
    manifest, records = _read_all(config.output)
    assert manifest.counts == {"inputs": 40, "embedded": 40, "failed": 0, "duplicates": 0}
    for r in records:
        np.testing.assert_allclose(r.vectors["pixels"], expected[r.key][1], atol=1e-4)


def test_bad_files_become_recorded_failures_and_counts_add_up(tmp_path, image_folder, worker_env):
    config = _config(tmp_path, [InputSpec.directory(str(image_folder))], MeanColourBackbone(str(tmp_path / "l")))
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))

    assert manifest.counts == {"inputs": 10, "embedded": 8, "failed": 2, "duplicates": 0}
    assert manifest.failures_by_reason == {"decode: ImageDecodeError": 2}
    assert manifest.failure_examples == {"decode: ImageDecodeError": str(image_folder / "china/empty.jpg")}
    lines = [json.loads(line) for f in manifest.error_files
             for line in open(os.path.join(config.output, f)) if line.strip()]
    by_key = {os.path.relpath(d["key"], image_folder): d for d in lines}
    assert set(by_key) == {"flower/notes.txt", "china/empty.jpg"}
    assert by_key["china/empty.jpg"]["message"] == "empty file (0 bytes)"
    assert by_key["flower/notes.txt"]["message"] == "not an image (unrecognised file format)"
    assert by_key["flower/notes.txt"]["stage"] == "decode"


@pytest.mark.slow
@pytest.mark.parametrize("runner_flags", [
    ["--runner=DirectRunner"],
    ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
], ids=["DirectRunner-1-worker", "DirectRunner-2-workers"])
def test_real_backbone_through_the_pipeline_equals_a_direct_call(tmp_path, image_folder, mobilenet,
                                                                 mobilenet_spec, runner_flags):
    from pipeline.cli import main

    out = tmp_path / "features"
    assert main(["extract", "--input", str(image_folder), "--output", str(out), "--batch-size", "3",
                 "--layer", "features.18", "--layer", "classifier", *runner_flags]) == 0

    manifest, records = _read_all(str(out))
    assert manifest.counts == {"inputs": 10, "embedded": 8, "failed": 2, "duplicates": 0}
    assert manifest.backbone["weights_sha256"] == mobilenet_spec.weights_sha256
    assert [(o.name, o.dim) for o in manifest.outputs] == [("features.18", 1280), ("classifier", 1000)]
    keys = sorted(r.key for r in records)
    with_bytes = [open(k, "rb").read() for k in keys]
    direct = mobilenet(np.stack([decode_image(b, mobilenet_spec.preprocessing) for b in with_bytes]))
    by_key = {r.key: r for r in records}
    for i, key in enumerate(keys):
        for name in ("features.18", "classifier"):
            np.testing.assert_allclose(by_key[key].vectors[name], direct[name][i], atol=1e-5, rtol=1e-5)
    assert by_key[str(image_folder / "china/gray.jpg")].label == "china"
    assert by_key[str(image_folder / "unlabelled.jpg")].label is None


@pytest.mark.slow
def test_output_reads_back_identically_with_tf_data_and_tfrecord_lite(tmp_path, image_folder, worker_env):
    import tensorflow as tf

    config = _config(tmp_path, [InputSpec.directory(str(image_folder))], MeanColourBackbone(str(tmp_path / "l")))
    run_extraction(config, PipelineOptions(IN_PROCESS))
    manifest, lite = _read_all(config.output)

    spec = tf_feature_description(manifest.outputs)
    files = shard_paths(config.output, manifest)
    parsed = [tf.io.parse_single_example(raw, spec) for raw in tf.data.TFRecordDataset(files)]
    assert len(parsed) == len(lite) == 8
    for record, example in zip(lite, parsed, strict=True):
        assert example[KEY].numpy().decode() == record.key
        assert example[LABEL].numpy().decode() == (record.label or "")
        np.testing.assert_array_equal(example[MEAN_COLOUR.example_key].numpy(), record.vectors["pixels"])


def test_progress_lines_come_from_worker_processes(tmp_path, many_images, worker_env, capsys):
    root, _ = many_images
    config = _config(tmp_path, [InputSpec.directory(str(root))], MeanColourBackbone(str(tmp_path / "l")))
    run_extraction(config, PipelineOptions(TWO_PROCESSES), progress=True, progress_every=0.2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("featurebeam: progress")]
    assert lines, "no progress line"
    assert lines[-1].startswith("featurebeam: progress  listed 40, read 40, embedded 40, failed 0")
    embedded = [int(line.split("embedded ")[1].split(",")[0]) for line in lines]
    assert embedded == sorted(embedded)  # never goes backwards


def test_quiet_silences_the_progress_line(tmp_path, many_images, capsys):
    from pipeline.cli import main

    root, _ = many_images
    assert main(["extract", "--input", str(root), "--output", str(tmp_path / "o"), "--quiet"]) == 0
    assert "featurebeam: progress" not in capsys.readouterr().err
    assert main(["extract", "--input", str(root), "--output", str(tmp_path / "o2")]) == 0
    assert "featurebeam: progress  listed 40, read 40, embedded 40" in capsys.readouterr().err


def test_beam_metrics_under_one_namespace_add_up(tmp_path, image_folder, worker_env):
    config = _config(tmp_path, [InputSpec.directory(str(image_folder))], MeanColourBackbone(str(tmp_path / "l")),
                     batch_size=3)
    p = beam.Pipeline(options=PipelineOptions(IN_PROCESS))
    build_extraction(p, config)
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace("featurebeam"))
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    distributions = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    assert counters["records_read"] == 10
    assert counters["records_decoded"] == counters["records_embedded"] == 8
    assert counters["records_failed"] == counters["failed decode: ImageDecodeError"] == 2
    assert counters["bytes_read"] == sum(f.stat().st_size for f in image_folder.rglob("*") if f.is_file())
    assert counters["feature_bytes_written"] > 0
    # RunInference's own metrics land in the same namespace (BackboneHandler.get_metrics_namespace).
    batch_sizes = distributions["inference_request_batch_size"]
    assert batch_sizes.sum == 8 and batch_sizes.max <= 3
    assert distributions["load_model_latency_milli_secs"].count == 1
    assert distributions["inference_batch_latency_micro_secs"].count == batch_sizes.count


def test_an_image_the_backbone_fails_on_does_not_take_its_batch_with_it(tmp_path, worker_env):
    from PIL import Image

    from tests.fakes import POISON, PoisonedBackbone

    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        Image.new("RGB", (40, 40), POISON if i == 5 else (i * 20, 100, 200 - i * 10)).save(root / f"{i:02d}.png")
    config = _config(tmp_path, [InputSpec.directory(str(root))], PoisonedBackbone(str(tmp_path / "l")), batch_size=4)
    result_manifest = run_extraction(config, PipelineOptions(IN_PROCESS))

    manifest, records = _read_all(config.output)
    assert manifest.counts == result_manifest.counts == {"inputs": 12, "embedded": 11, "failed": 1, "duplicates": 0}
    assert sorted(os.path.basename(r.key) for r in records) == [f"{i:02d}.png" for i in range(12) if i != 5]
    assert manifest.failures_by_reason == {"embed: InvalidArgumentError": 1}
    (error,) = [json.loads(line) for f in manifest.error_files for line in open(os.path.join(config.output, f))]
    assert error["key"] == str(root / "05.png") and error["stage"] == "embed"
    assert "poisoned image" in error["message"]
