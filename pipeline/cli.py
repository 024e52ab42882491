"""``featurebeam``: the command line.

    featurebeam extract --input DIR_OR_GLOB --output OUTDIR [--backbone NAME] [--batch-size N] [Beam flags]
    featurebeam train --features DIR --output MODELDIR [--head linear|mlp ...] [--test-features DIR]
    featurebeam finetune --input TRAIN --output MODELDIR [--test-input TEST] [--unfreeze K] [--epochs N]
    featurebeam predict --model MODELDIR --input DIR_OR_GLOB --output OUTDIR [Beam flags]
    featurebeam inspect OUTDIR [--check]
    featurebeam export OUTDIR --to parquet|npy --output DIR [--feature-dtype float16] [Beam flags]
    featurebeam report OUTDIR [--model MODELDIR]
    featurebeam bench [--backbone NAME] [--images DIR] [--batch-size N] [--json]
    featurebeam layers [--backbone NAME] [--pooling avg|max|none]
    featurebeam demo [--workdir DIR] [Beam flags]

Every flag that is not featurebeam's own is handed to Apache Beam (``--runner``, ``--direct_num_workers``,
Dataflow's flags ...); a flag that neither knows is an error, not silently dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from pipeline.errors import UsageError
from pipeline.flags import Parser, split_flags, use_storage_flags, with_local_defaults
from pipeline.logs import quiet_beam

__all__ = ["main"]


def _extract_parser() -> argparse.ArgumentParser:
    from pipeline.extract.options import ExtractOptions

    parser = Parser(
        prog="featurebeam extract", allow_abbrev=False,
        description="Extract features of images or texts with a frozen backbone into sharded TFRecords "
                    "(and/or Parquet).",
        epilog="Any Apache Beam option passes through, e.g. --runner DataflowRunner, "
               "--direct_num_workers 2 --direct_running_mode multi_processing.")
    ExtractOptions._add_argparse_args(parser)
    return parser


def cmd_extract(argv: Sequence[str]) -> int:
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    from pipeline.extract.dataflow import dataflow_defaults
    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import configure
    from pipeline.extract.options import runner_name
    from pipeline.extract.summary import format_staged, format_summary, large_record_warnings, text_input_notes

    split_flags(_extract_parser(), argv)  # rejects flags that neither featurebeam nor Beam knows
    argv = with_local_defaults(argv)
    defaults = dataflow_defaults(PipelineOptions(argv))
    if defaults:
        print(f"featurebeam extract: Dataflow defaults: {' '.join(defaults)}", file=sys.stderr)
    options = PipelineOptions([*argv, *defaults])
    config = configure(options)
    for warning in large_record_warnings(config.outputs):
        print(warning, file=sys.stderr)
    for note in [] if config.quiet else text_input_notes(config):
        print(note, file=sys.stderr)
    start = time.monotonic()
    manifest = run_extraction(config, options, progress=not config.quiet)
    if manifest is None:
        template = options.view_as(GoogleCloudOptions).template_location
        print(format_staged(runner_name(options), template, config.template_launch, config.output))
        return 0
    print(format_summary(manifest, config.output, time.monotonic() - start))
    counts = manifest.counts
    if counts["inputs"] and counts["failed"] / counts["inputs"] > config.max_failure_fraction:
        print(f"featurebeam extract: failed: {counts['failed']} of {counts['inputs']} inputs failed, more than "
              f"--max-failure-fraction {config.max_failure_fraction:g}; the outputs written are kept "
              f"(reasons in {config.output.rstrip('/')}/errors/)", file=sys.stderr)
        return 3
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from pipeline.tools.demo import run_demo

    parser = Parser(
        prog="featurebeam demo", allow_abbrev=False,
        description="Write scikit-learn's digits as PNG files in class folders and extract their features.")
    parser.add_argument("--workdir", default="featurebeam-demo", help="where images and features go")
    own, beam_argv = split_flags(parser, argv)
    return run_demo(own.workdir, with_local_defaults(beam_argv))


def _train_parser() -> argparse.ArgumentParser:
    from pipeline.train.config import HEADS

    parser = Parser(
        prog="featurebeam train", allow_abbrev=False,
        description="Train classifier heads on extracted features; export the best as a serving model.",
        epilog="Paths may be local, gs:// or s3://; Apache Beam's storage flags (--s3_endpoint_url ...) pass through.")
    parser.add_argument("--features", action="append", required=True, metavar="DIR",
                        help="a feature set written by featurebeam extract (repeatable)")
    parser.add_argument("--output", required=True, metavar="MODELDIR")
    parser.add_argument("--head", action="append", choices=HEADS,
                        help="head to train (repeatable; default: linear)")
    parser.add_argument("--output-name", help="which extracted output to train on (default: the first)")
    parser.add_argument("--test-features", action="append", default=[], metavar="DIR",
                        help="a held-out feature set, reported apart (repeatable)")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--class-weights", action="store_true", help="weight classes inversely to their frequency")
    parser.add_argument("--memory-limit-mb", type=int, default=2048,
                        help="feature sets larger than this stream from disk instead of loading (default: 2048; "
                             "in-memory training peaks near 1 GB + 3 x the features)")
    parser.add_argument("--sweep-layers", action="store_true",
                        help="train a linear probe on every extracted layer, report which transfers best "
                             "(layer_sweep.json, layer_sweep.png), then train the heads on that layer")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def cmd_train(argv: Sequence[str]) -> int:
    from pipeline.folders import absolute
    from pipeline.train.config import TrainConfig
    from pipeline.train.layer_sweep import run_layer_sweep
    from pipeline.train.run import run_training
    from pipeline.train.summary import format_layer_sweep, format_training

    args, beam_argv = split_flags(_train_parser(), argv)
    use_storage_flags(beam_argv)
    config = TrainConfig(features=tuple(args.features), output=absolute(args.output),
                         heads=tuple(dict.fromkeys(args.head or ["linear"])), output_name=args.output_name,
                         test_features=tuple(args.test_features), validation_fraction=args.validation_fraction,
                         class_weights=args.class_weights, memory_limit_mb=args.memory_limit_mb,
                         overwrite=args.overwrite)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.sweep_layers:
        if args.output_name:
            raise UsageError("--sweep-layers chooses the layer itself; leave out --output-name")
        report = run_layer_sweep(config, log=log)
    else:
        report = run_training(config, log=log)
    print(format_training(report, config.output))
    if report.get("layer_sweep"):
        print(format_layer_sweep(report["layer_sweep"], config.output))
    return 0


def cmd_predict(argv: Sequence[str]) -> int:
    from pipeline.tools.predict import PredictConfig, format_prediction, run_prediction

    parser = Parser(
        prog="featurebeam predict", allow_abbrev=False,
        description="Classify raw images or texts with a model directory written by featurebeam train.",
        epilog="Any Apache Beam option passes through, as for extract.")
    parser.add_argument("--model", required=True, metavar="MODELDIR")
    parser.add_argument("--input", action="append", required=True, metavar="INPUT")
    parser.add_argument("--output", required=True, metavar="OUTDIR")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true")
    own, beam_argv = split_flags(parser, argv)
    options = use_storage_flags(with_local_defaults(beam_argv))  # before any input, MODELDIR or OUTDIR is looked at
    config = PredictConfig.create(own.model, own.input, own.output, own.batch_size, own.overwrite)
    start = time.monotonic()
    summary = run_prediction(config, options)
    print(format_prediction(summary, config.output, time.monotonic() - start))
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    from pipeline.tools.bench import format_bench, run_bench

    parser = Parser(
        prog="featurebeam bench", allow_abbrev=False,
        description="Measure images/s: the backbone's forward pass alone, and featurebeam extract end to end.",
        epilog="Apache Beam options pass through to the extract runs (e.g. --direct_running_mode multi_processing).")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", metavar="PATH", help="keras:NAME backbones: a .weights.h5 of that architecture")
    parser.add_argument("--preprocessing", choices=("tf", "torch", "caffe", "raw"), default=None,
                        help="model files: what the model expects of pixels (as for extract)")
    parser.add_argument("--no-fold-batchnorm", action="store_true",
                        help="keras:NAME and model files: BatchNorm as its own layer, not folded (to compare)")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the forward pass's type, as for extract; other than float32, the float32 limit is "
                             "measured too and the speed-up reported")
    parser.add_argument("--images", metavar="DIR", help="a folder of JPEG files (default: generated 500x400 photos)")
    parser.add_argument("--count", type=int, default=600, help="photos to generate without --images (default 600)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="the pipeline's batch size (default: extract's); the limit is the best of 16, 32, 64 "
                             "and N")
    parser.add_argument("--limit-seconds", type=float, default=3.0, metavar="S",
                        help="how long the forward pass alone is timed at each batch size (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    own, beam_argv = split_flags(parser, argv)
    if own.images is not None and not os.path.isdir(own.images):
        raise UsageError(f"--images {own.images} is not a directory")
    if (own.batch_size is not None and own.batch_size < 1) or own.count < 5 or not own.limit_seconds > 0:
        raise UsageError("--batch-size must be at least 1, --count at least 5 and --limit-seconds above 0")
    result = run_bench(own.backbone, own.images, own.batch_size, beam_argv, own.count,
                       log=lambda m: print(f"featurebeam bench: {m}", file=sys.stderr), weights=own.weights,
                       preprocessing=own.preprocessing, fold_batchnorm=not own.no_fold_batchnorm,
                       precision=own.precision, limit_seconds=own.limit_seconds)
    print(result.to_json() if own.json else format_bench(result))
    return 0


def cmd_layers(argv: Sequence[str]) -> int:
    from pipeline.backbones.registry import available_backbones, resolve_backbone
    from pipeline.tools.layers import format_layers
    from transforms.embed.pooling import POOLINGS

    parser = Parser(prog="featurebeam layers", allow_abbrev=False,
                     description="The layers of a backbone worth extracting, with their output shapes and the bytes "
                                 "each adds to a feature record after pooling.")
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help=f"one of {', '.join(available_backbones())}, keras:NAME, or a .keras/.h5 model file")
    parser.add_argument("--weights", metavar="PATH", help="keras:NAME backbones: a .weights.h5 of that architecture")
    parser.add_argument("--preprocessing", choices=("tf", "torch", "caffe", "raw"), default=None)
    parser.add_argument("--all", action="store_true", help="every layer, not only those worth extracting from")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS)
    args = parser.parse_args(argv)
    spec = resolve_backbone(args.backbone, args.weights, args.preprocessing)
    print(format_layers(spec, args.pooling, args.all))
    return 0


def cmd_inspect(argv: Sequence[str]) -> int:
    from pipeline.tools.inspect import format_inspection, inspect_feature_set

    parser = Parser(prog="featurebeam inspect", allow_abbrev=False,
                                     description="Summarise a feature set; with --check, verify it.")
    parser.add_argument("output", metavar="OUTDIR", help="a feature set written by featurebeam extract")
    parser.add_argument("--check", action="store_true",
                        help="verify every record against the manifest; exit 1 on any mismatch")
    parser.add_argument("--samples", type=int, default=3, help="sample records to show (default: 3)")
    args, beam_argv = split_flags(parser, argv)
    use_storage_flags(beam_argv)  # gs:// and s3:// sets too (Beam's --s3_* flags)
    result = inspect_feature_set(args.output, samples=args.samples)
    print(format_inspection(result, args.check))
    return 1 if args.check and result.problems else 0


def cmd_export(argv: Sequence[str]) -> int:
    from pipeline.tools.export import TARGETS, ExportConfig, format_export, run_export

    parser = Parser(prog="featurebeam export", allow_abbrev=False,
                    description="Convert a feature set for other tools: Parquet shards (pandas, polars, DuckDB, "
                                "Spark, BigQuery) or one float32 .npy matrix per output plus keys.parquet (numpy, "
                                "faiss). A Beam job: any size, local, gs:// or s3://.",
                    epilog="Any Apache Beam option passes through, as for extract.")
    parser.add_argument("features", metavar="FEATURES", help="a feature set written by featurebeam extract")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--feature-dtype", choices=("float32", "float16"), default=None,
                        help="--to parquet: store vectors as float16 (half the bytes) or float32 (default: as the "
                             "source stores them)")
    parser.add_argument("--overwrite", action="store_true", help="replace what DIR holds")
    own, beam_argv = split_flags(parser, argv)
    options = use_storage_flags(with_local_defaults(beam_argv))
    config = ExportConfig.create(own.features, own.to, own.output, own.feature_dtype, own.overwrite)
    start = time.monotonic()
    summary = run_export(config, options)
    print(format_export(summary, config.output, time.monotonic() - start))
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from pipeline.report.page import build_report

    parser = Parser(prog="featurebeam report", allow_abbrev=False,
                    description="Write one self-contained HTML page about a feature set.",
                    epilog="Paths may be local, gs:// or s3://; Apache Beam's storage flags (--s3_endpoint_url ...) "
                           "pass through.")
    parser.add_argument("output", metavar="OUTDIR", help="a feature set written by featurebeam extract")
    parser.add_argument("--model", metavar="MODELDIR", help="also show a trained model's metrics")
    parser.add_argument("--html", metavar="FILE", help="where to write the page (default: OUTDIR/report.html)")
    parser.add_argument("--max-thumbnails", type=int, default=300, metavar="N",
                        help="embed at most N thumbnails (or text lines) in the page, all sections together "
                             "(default 300)")
    args, beam_argv = split_flags(parser, argv)
    use_storage_flags(beam_argv)
    from apache_beam.io.filesystems import FileSystems

    path = args.html or FileSystems.join(args.output, "report.html")
    text = build_report(args.output, args.model, max_thumbnails=args.max_thumbnails)
    with FileSystems.create(path, mime_type="text/html") as f:
        f.write(text.encode("utf-8"))
    print(f"featurebeam: report written to {path} ({len(text) // 1024} KB)")
    return 0


def cmd_finetune(argv: Sequence[str]) -> int:
    """Its flags and flow live in ``pipeline/finetune/command.py`` (imported here, when it runs)."""
    from pipeline.finetune import command

    return command.cmd_finetune(argv)


COMMANDS = {"extract": cmd_extract, "train": cmd_train, "finetune": cmd_finetune, "predict": cmd_predict,
            "inspect": cmd_inspect, "export": cmd_export, "report": cmd_report, "bench": cmd_bench,
            "layers": cmd_layers, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: featurebeam {extract,train,finetune,predict,inspect,export,report,bench,layers,demo} ...\n\n"
              "  extract  extract backbone features of images into sharded TFRecords + manifest.json\n"
              "  train    train classifier heads on extracted features; export a serving model\n"
              "  finetune fine-tune the top blocks of the backbone from a linear probe; export a serving model\n"
              "  predict  classify raw images with a trained model directory\n"
              "  inspect  summarise a feature set; --check verifies it against its manifest\n"
              "  export   convert a feature set to Parquet, or to .npy matrices + keys.parquet\n"
              "  report   one self-contained HTML page: thumbnails per class, neighbours, mistakes, metrics\n"
              "  bench    images/s of the backbone alone and of the whole pipeline, on this machine\n"
              "  layers   a backbone's layers to extract from, with shapes and bytes per record\n"
              "  demo     extract features of scikit-learn's digits and train a linear head on them\n\n"
              "Run 'featurebeam COMMAND --help' for a command's options.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported, here or in workers
    if command == "extract" and ("-h" in rest or "--help" in rest):
        _extract_parser().print_help()
        return 0
    from pipeline.backbones.spec import BackboneUnavailableError, UnknownBackboneError
    from pipeline.errors import ConfigError
    from pipeline.train.feature_sets import FeatureSetError
    from transforms.worker.storage import ready_storage

    try:
        with quiet_beam(not os.environ.get("FEATUREBEAM_DEBUG")):
            ready_storage()  # object storage as the workers will see it (GCS emulator, S3 flags)
            return COMMANDS[command](rest)
    except (UsageError, ConfigError, UnknownBackboneError, BackboneUnavailableError, FeatureSetError) as e:
        print(f"featurebeam {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"featurebeam {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failed job: one clear line; the traceback only on request
        if os.environ.get("FEATUREBEAM_DEBUG"):
            raise
        message = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        print(f"featurebeam {command}: failed: {type(e).__name__}: {message[:800]} "
              "(set FEATUREBEAM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
