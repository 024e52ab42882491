"""What --resume compares, what launch refuses, and the numbers the progress line and the summary print."""

from __future__ import annotations

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.extract.progress import format_progress
from pipeline.extract.runtime import cpu_has_bfloat16
from pipeline.extract.summary import format_summary
from transforms.schema.manifest import Manifest


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    for i in range(6):
        Image.new("RGB", (24, 20), (40 * i, 90, 200 - 30 * i)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    keras.Model(inputs, x).save(path)
    return path


@pytest.mark.parametrize("changed, named", [
    (["--preprocessing", "torch"], "--backbone (its weights or --preprocessing)"),
    (["--preprocessing", "raw", "--mixed-precision"], "--precision (or --mixed-precision)"),
    pytest.param(["--preprocessing", "raw", "--precision", "bfloat16"], "--precision (or --mixed-precision)",
                 marks=pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16")),
], ids=["preprocessing", "mixed-precision", "bfloat16"])
def test_resume_refuses_settings_that_change_the_outputs(tmp_path, small_images, model_file, capsys, changed, named):
    out = str(tmp_path / "out")
    base = ["extract", "--input", str(small_images), "--output", out, "--backbone", model_file, "--quiet"]
    assert main([*base, "--preprocessing", "raw"]) == 0
    capsys.readouterr()
    assert main([*base, *changed, "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"featurebeam extract: error: cannot resume {out}: it was started with different {named}; use the same "
        "settings, or --overwrite to start again")


def test_mixed_precision_with_a_text_backbone_is_refused_at_launch(tmp_path, capsys):
    texts = tmp_path / "posts.jsonl"
    texts.write_text('{"id": "1", "text": "hello"}\n')
    code = main(["extract", "--input", str(texts), "--input-format", "text", "--backbone", "minilm_l6",
                 "--output", str(tmp_path / "out"), "--mixed-precision", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith(
        "featurebeam extract: error: --mixed-precision is for image backbones; text backbone minilm_l6 runs in "
        "float32")


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16")
def test_a_text_backbone_takes_bfloat16(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract.launch import configure

    texts = tmp_path / "posts.jsonl"
    texts.write_text('{"id": "1", "text": "hello"}\n')
    config = configure(PipelineOptions(["--input", str(texts), "--backbone", "minilm_l6", "--output",
                                        str(tmp_path / "out"), "--precision", "bfloat16"]))
    assert config.embed.precision == "bfloat16" and config.backbone.modality == "text"


def test_a_text_backbone_reads_tables_and_txt_files_as_texts_and_says_so(tmp_path, capsys):
    from types import SimpleNamespace

    from pipeline.extract.summary import text_input_notes
    from pipeline.inputs import resolve_input
    from transforms.read.tables import InputFields

    (tmp_path / "posts.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "notes.txt").write_text("hello\n")
    specs = [resolve_input(str(tmp_path / "posts.jsonl"), modality="text"),
             resolve_input(str(tmp_path / "notes.txt"), modality="text"),
             resolve_input(str(tmp_path / "notes.txt"), "lines", modality="text"),
             resolve_input(str(tmp_path), modality="text"), resolve_input(f"{tmp_path}/*", modality="text")]
    assert [s.format for s in specs] == ["text", "files", "lines", "files", "auto-text"]
    assert resolve_input(str(tmp_path / "posts.jsonl")).format == "manifest"  # for an image backbone
    config = SimpleNamespace(backbone=SimpleNamespace(modality="text"), inputs=specs, fields=InputFields(text="body"))
    assert text_input_notes(config) == [
        f"featurebeam extract: {tmp_path}/posts.jsonl: texts from each row's 'body' field (label 'label', split "
        "'split', id 'id'; --text-field names another)",
        f"featurebeam extract: {tmp_path}/notes.txt: one text per file, UTF-8 (labels from first-level folders of a "
        "directory)",
        f"featurebeam extract: {tmp_path}/notes.txt: one text per line (keys URI#line=N)",
        f"featurebeam extract: {tmp_path}: one text per file, UTF-8 (labels from first-level folders of a directory)",
        f"featurebeam extract: {tmp_path}/*: tables (.jsonl, .csv, .tsv) as texts from each row's 'body' field "
        "(label 'label', split 'split', id 'id'; --text-field names another); other files one text each"]
    config.backbone.modality = "image"
    assert text_input_notes(config) == []


def test_each_modality_refuses_the_formats_of_the_other_at_launch(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.inputs import check_formats, resolve_input

    (tmp_path / "s.tar").write_bytes(b"")
    (tmp_path / "n.txt").write_text("a\n")
    shard = resolve_input(str(tmp_path / "s.tar"), modality="text")
    lines = resolve_input(str(tmp_path / "n.txt"), "lines")
    with pytest.raises(ConfigError, match=r"^backbone minilm_l6 embeds text, but input .*/s.tar is read as images "
                                          r"\(tar\): give .jsonl/.csv/.tsv tables, .txt files, or --input-format "
                                          r"lines$"):
        check_formats([shard], "text", "minilm_l6")
    with pytest.raises(ConfigError, match=r"^input .*/n.txt is read as texts \(--input-format lines\), but backbone "
                                          r"mobilenet_v2 embeds images; choose a text backbone \(minilm_l6\)$"):
        check_formats([lines], "image", "mobilenet_v2")
    check_formats([lines], "text", "minilm_l6")


def test_a_text_table_without_the_text_field_is_refused_at_launch_naming_the_fields_it_has(tmp_path, capsys):
    posts = tmp_path / "posts.csv"
    posts.write_text("body,label\nhello,a\n")
    assert main(["extract", "--input", str(posts), "--backbone", "minilm_l6", "--output", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"featurebeam extract: error: input {posts}: its first row has no field 'text' (it has 'body', 'label'); "
        "name the field that holds the text with --text-field")


@pytest.mark.parametrize("counts, seconds, eta", [
    # two tar shards listed, 100 inputs in them: 50 done at 5 inputs/s leaves 10 s
    ({"listed": 2, "expected": 100, "read": 60, "embedded": 40, "failed": 10}, 10.0, "ETA 10 s"),
    # a resumed run: 30 of 100 were skipped as committed; 20 done this run at 2/s, 50 left
    ({"listed": 100, "expected": 100, "embedded": 18, "failed": 2, "skipped": 30}, 10.0, "ETA 25 s"),
    # still expanding: nothing known yet, no ETA rather than a wrong one
    ({"listed": 3, "embedded": 0, "failed": 0}, 10.0, None),
], ids=["archives", "resumed", "unknown"])
def test_the_eta_counts_inputs_not_files(counts, seconds, eta):
    line = format_progress(counts, seconds)
    assert (eta in line) if eta else ("ETA" not in line), line


def test_the_progress_rate_names_what_is_embedded():
    counts = {"listed": 1, "expected": 40, "read": 30, "embedded": 20, "failed": 0}
    assert ", 2.0 images/s, ETA 10 s" in format_progress(counts, 10.0)
    assert ", 2.0 texts/s, ETA 10 s" in format_progress(counts, 10.0, "texts")


def test_the_summary_rate_counts_what_this_run_did():
    manifest = Manifest(
        backbone={"name": "mobilenet_v2", "weights_sha256": "0" * 64}, outputs=(), labels=(),
        counts={"inputs": 31, "embedded": 30, "failed": 1, "duplicates": 0}, shards=(), inputs={},
        resumed_records=11)  # 11 committed earlier, one of them a failure: this run did 20 inputs
    first = format_summary(manifest, "/out", 10.0).splitlines()[0]
    assert "(2.0 images/s this run)" in first, first


@pytest.mark.parametrize("example, line", [
    ("/in/a.png", "  duplicate 2 inputs repeated a key given before (kept once), e.g. /in/a.png"),
    (None, "  duplicate 2 inputs repeated a key given before (kept once)"),  # every copy skipped as done
])
def test_the_summary_names_a_repeated_key_when_one_was_dropped(example, line):
    manifest = Manifest(
        backbone={"name": "mobilenet_v2", "weights_sha256": "0" * 64}, outputs=(), labels=(),
        counts={"inputs": 5, "embedded": 3, "failed": 0, "duplicates": 2}, shards=(), inputs={},
        duplicate_example=example)
    assert line in format_summary(manifest, "/out", 1.0).splitlines()


def test_the_manifest_and_the_summary_say_how_the_forward_pass_ran(tmp_path, small_images, model_file, capsys):
    """The CPU it ran on (its kind), TensorFlow's oneDNN kernels as TensorFlow itself reports them, the choice that
    asked for them, and the precision; ``--onednn off`` cannot change a process that has imported TensorFlow
    already (as this one has), and the manifest says what ran, not what was asked."""
    from transforms.schema.manifest import read_manifest
    from transforms.worker.cpu import cpu_kind, onednn_state

    out = str(tmp_path / "out")
    assert main(["extract", "--input", str(small_images), "--output", out, "--backbone", model_file,
                 "--preprocessing", "raw", "--onednn", "off"]) == 0
    runtime = read_manifest(out).runtime
    assert runtime == {"cpu": cpu_kind().describe(), "onednn": onednn_state(), "onednn_choice": "off",
                       "precision": "float32"}
    assert f"  runtime   float32, oneDNN {onednn_state()}, on {cpu_kind().describe()}" in capsys.readouterr().out
