"""``featurebeam bench`` and the launcher's choices for GPU jobs (behaviour, never wall time)."""

from __future__ import annotations

import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cli import main
from pipeline.extract.embedding import CPU_BATCH_SIZE, GPU_BATCH_SIZE
from pipeline.extract.launch import configure
from pipeline.extract.runtime import uses_gpus
from pipeline.tools.bench import descendants, make_photos, vm_hwm_kb


def test_generated_photos_are_distinct_jpegs_of_the_asked_size(tmp_path):
    from PIL import Image

    paths = make_photos(str(tmp_path), 6)
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(500, 400)} and len({open(p, "rb").read() for p in paths}) == 6


def test_process_memory_is_read_from_proc():
    import os

    assert os.getpid() in descendants(os.getpid())
    assert vm_hwm_kb(os.getpid()) > 10_000


@pytest.mark.parametrize("flags, gpus", [
    (["--runner=DataflowRunner", "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
      "install-nvidia-driver"], True),
    (["--runner=DataflowRunner", "--experiments=worker_accelerator=type:nvidia-tesla-t4;count:1"], True),
    (["--runner=DataflowRunner"], False),
], ids=["service-option", "experiment", "no-accelerator"])
def test_gpu_jobs_get_larger_batches_and_one_model_per_machine(tmp_path, sample_photos, flags, gpus):
    (tmp_path / "a.jpg").write_bytes(sample_photos["china.jpg"])
    options = PipelineOptions(["--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "out"),
                               f"--temp_location={tmp_path / 'staging'}", *flags])
    assert uses_gpus(options) is gpus
    config = configure(options)
    assert config.embed.batch_size == (GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE)
    assert config.embed.model_copies == (1 if gpus else 0)


@pytest.mark.slow
def test_bench_reports_both_rates_their_ratio_and_memory(capsys):
    from pipeline.extract.runtime import cpu_has_bfloat16

    precision = "bfloat16" if cpu_has_bfloat16() else "float32"
    assert main(["bench", "--count", "15", "--batch-size", "4", "--json", "--precision", precision,
                 "--limit-seconds", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["precision"] == precision
    if precision == "bfloat16":  # the float32 limit measured beside it, and the speed-up
        assert "--precision=bfloat16" in result["extract_flags"] and result["float32_limit_images_per_s"] > 0
        assert result["precision_speedup"] == pytest.approx(
            result["limit_images_per_s"] / result["float32_limit_images_per_s"])
    assert result["images"] == 15 and set(result["limit_by_batch_size"]) == {"4", "16", "32", "64"}
    assert "--batch-size=4" in result["extract_flags"]
    for key in ("limit_images_per_s", "pipeline_images_per_s", "pipeline_end_to_end_images_per_s", "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["pipeline_images_per_s"] / result["limit_images_per_s"])
    # the CPU limit: decoding and the forward pass, each in core-seconds per image, on the usable cores
    assert result["decode_core_ms"] > 0 and result["forward_core_ms"] > 0 and result["cores"] >= 1
    cost = (result["decode_core_ms"] + result["forward_core_ms"]) / 1000
    assert result["cpu_limit_images_per_s"] == pytest.approx(result["cores"] / cost)
    assert result["ratio_to_cpu_limit"] == pytest.approx(
        result["pipeline_images_per_s"] / result["cpu_limit_images_per_s"])
    # the machine beside the figures: its CPU's kind, and oneDNN as TensorFlow runs it here
    from pipeline.tools.bench import BenchResult, format_bench
    from transforms.worker.cpu import cpu_kind, onednn_state

    assert (result["cpu"], result["onednn"]) == (cpu_kind().describe(), onednn_state())
    assert format_bench(BenchResult(**result)).splitlines()[1] == (
        f"  machine   {cpu_kind().describe()}, {result['cores']} cores; TensorFlow's oneDNN kernels {onednn_state()}")


def test_decoding_cost_is_measured_with_the_workers_decoder(sample_photos, monkeypatch):
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.tools import bench
    from transforms.decode import images

    prep = resolve_backbone("mobilenet_v2").preprocessing
    photos = [sample_photos["china.jpg"], sample_photos["flower.jpg"]]
    calls = []
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda data, p, *a: calls.append((data, p)) or real(data, p, *a))
    cost = bench.measure_decode(photos, prep, repeats=2)
    assert calls == [(photos[0], prep), (photos[1], prep)] * 2  # every image, each pass, the run's preprocessing
    assert cost > 0
