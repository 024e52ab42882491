"""What a user sees at launch: one clear line for each mistake, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.conftest import REPO


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def one_image(tmp_path, sample_photos):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_photos["china.jpg"])
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--backbone", "resnet9000"], "unknown backbone 'resnet9000'; available: efficientnet_lite0, minilm_l6, "
                                   "mobilenet_v2, musicnn_msd, musicnn_mtt, keras:NAME (keras.applications), "
                                   "hub:PRESET (KerasHub), a .keras/.h5 model file or a SavedModel directory"),
    (["--layer", "features.99"], "backbone mobilenet_v2 has no layer 'features.99'"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--no-such-flag", "1"], "unknown option '--no-such-flag'"),
    (["--input-format", "text"], "is read as texts (--input-format text), but backbone mobilenet_v2 embeds images; "
                                     "choose a text backbone (minilm_l6)"),
    (["--input-format", "zip"], "argument --input-format: invalid choice: 'zip'"),
    (["--read-chunk-mb", "0"], "--read-chunk-mb must be positive"),
], ids=["unknown-backbone", "unknown-layer", "batch-size", "unknown-flag", "text-on-image-backbone", "unknown-format",
        "chunk-size"])
def test_bad_configuration_is_one_line_at_launch(tmp_path, one_image, capsys, extra, message):
    code, out, err = _run(["extract", "--input", str(one_image), "--output", str(tmp_path / "o"), *extra], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_and_empty_inputs_are_refused(tmp_path, capsys):
    code, _, err = _run(["extract", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and f"input {tmp_path / 'nope'} does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["extract", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "matches no files" in err
    code, _, err = _run(["extract", "--input", str(tmp_path / "*.jpg"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "matches no files" in err


def test_output_that_cannot_be_written_is_refused(tmp_path, one_image, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = _run(["extract", "--input", str(one_image), "--output", str(a_file)], capsys)
    assert code == 2 and "exists and is not a directory" in err
    code, _, err = _run(["extract", "--input", str(one_image), "--output", str(a_file / "below")], capsys)
    assert code == 2 and "is not writable" in err


@pytest.mark.slow
def test_non_empty_output_needs_overwrite_which_replaces_only_our_files(tmp_path, one_image, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    code, _, err = _run(["extract", "--input", str(one_image), "--output", str(out)], capsys)
    assert code == 2 and "is not empty; pass --overwrite" in err

    assert main(["extract", "--input", str(one_image), "--output", str(out), "--overwrite"]) == 0
    first = sorted(os.listdir(out / "features"))
    (one_image / "b.jpg").write_bytes((one_image / "a.jpg").read_bytes())
    assert main(["extract", "--input", str(one_image), "--output", str(out), "--overwrite"]) == 0
    out_text = capsys.readouterr().out
    assert "embedded 2 of 2 inputs (0 failed)" in out_text
    second = sorted(os.listdir(out / "features"))
    assert len(first) == 1 and 1 <= len(second) <= 2 and not set(first) & set(second)  # the first run's shard went
    assert (out / "keep.txt").read_text() == "user file"


def test_console_script_reports_errors_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "extract", "--input", str(tmp_path / "missing"),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"featurebeam extract: error: input {tmp_path / 'missing'} does not exist"


def test_help_lists_the_options(capsys):
    assert main(["extract", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--input", "--output", "--backbone", "--batch-size", "--overwrite", "--runner"):
        assert flag in out


@pytest.mark.worker_processes
@pytest.mark.parametrize("given, expected", [
    ([], ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    (["--direct_num_workers=3"], ["--direct_num_workers=3", "--runner=FnApiRunner"]),
    (["--runner", "DirectRunner"], ["--runner", "DirectRunner"]),
    (["--runner=DataflowRunner", "--project=p"], ["--runner=DataflowRunner", "--project=p"]),
], ids=["nothing-given", "workers-given", "runner-given", "remote"])
def test_local_defaults_apply_only_to_what_the_user_left_out(given, expected):
    from pipeline.flags import with_local_defaults

    assert with_local_defaults(given) == expected


@pytest.mark.slow
def test_summary_counts_add_up_and_name_an_example_of_each_failure(tmp_path, image_folder, capsys):
    assert main(["extract", "--input", str(image_folder), "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "embedded 8 of 10 inputs (2 failed)" in out
    assert f"failed    2 x decode: ImageDecodeError, e.g. {image_folder / 'china/empty.jpg'}" in out


@pytest.mark.slow
def test_too_many_failures_end_with_a_clear_non_zero_status(tmp_path, image_folder, capsys):
    out = tmp_path / "o"
    assert main(["extract", "--input", str(image_folder), "--output", str(out), "--quiet",
                 "--max-failure-fraction", "0.1"]) == 3
    err = capsys.readouterr().err
    assert "2 of 10 inputs failed, more than --max-failure-fraction 0.1; the outputs written are kept" in err
    assert (out / "manifest.json").exists()
    assert main(["extract", "--input", str(image_folder), "--output", str(out), "--quiet", "--overwrite",
                 "--max-failure-fraction", "0.2"]) == 0
    assert main(["extract", "--input", str(image_folder), "--output", str(out), "--max-failure-fraction", "2"]) == 2
    assert "--max-failure-fraction must be between 0 and 1, got 2.0" in capsys.readouterr().err


def test_unknown_layer_names_the_nearest_ones(tmp_path, one_image, capsys):
    code, _, err = _run(["extract", "--input", str(one_image), "--output", str(tmp_path / "o"),
                         "--backbone", "efficientnet_lite0", "--layer", "block.15"], capsys)
    assert code == 2
    assert err.strip() == ("featurebeam extract: error: backbone efficientnet_lite0 has no layer 'block.15'; did you "
                           "mean blocks.15 or blocks.5 or blocks.1? 'featurebeam layers --backbone "
                           "efficientnet_lite0' lists them")


def test_layers_lists_shapes_and_bytes_per_record(capsys):
    assert main(["layers", "--backbone", "mobilenet_v2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["features.18"][1:4] == ["7x7x1280", "1,280", "5,120"] and rows["features.18"][-1] == "(default)"
    assert rows["classifier"][1:4] == ["1000", "1,000", "4,000"]
    assert main(["layers", "--backbone", "mobilenet_v2", "--pooling", "none"]) == 0
    assert "62,720" in capsys.readouterr().out  # 7x7x1280 flattened
