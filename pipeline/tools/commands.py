"""The tool commands, each its flags (``NAME_parser``) and its run (``cmd_NAME``): ``predict``, ``inspect``, ``export``,
``bench``, ``layers`` and ``demo``; the work itself is in the module of the same name."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from pipeline.errors import UsageError
from pipeline.flags import Parser, split_flags, use_storage_flags, with_local_defaults
from transforms.worker.cpu import ONEDNN_CHOICES

__all__ = ["cmd_predict", "cmd_inspect", "cmd_export", "cmd_bench", "cmd_layers", "cmd_demo", "predict_parser",
           "inspect_parser", "export_parser", "bench_parser", "layers_parser", "demo_parser"]


def predict_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="featurebeam predict", allow_abbrev=False,
        description="Classify raw images or texts with a model directory written by featurebeam train.",
        epilog="Any Apache Beam option passes through, as for extract.")
    parser.add_argument("--model", required=True, metavar="MODELDIR")
    parser.add_argument("--input", action="append", required=True, metavar="INPUT")
    parser.add_argument("--output", required=True, metavar="OUTDIR")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def cmd_predict(argv: Sequence[str]) -> int:
    from pipeline.tools.predict import PredictConfig, format_prediction, run_prediction

    own, beam_argv = split_flags(predict_parser(), argv)
    options = use_storage_flags(with_local_defaults(beam_argv))  # before any input, MODELDIR or OUTDIR is looked at
    config = PredictConfig.create(own.model, own.input, own.output, own.batch_size, own.overwrite)
    start = time.monotonic()
    summary = run_prediction(config, options)
    print(format_prediction(summary, config.output, time.monotonic() - start))
    return 0


def inspect_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="featurebeam inspect", allow_abbrev=False,
                    description="Summarise a feature set; with --check, verify it.")
    parser.add_argument("output", metavar="OUTDIR", help="a feature set written by featurebeam extract")
    parser.add_argument("--check", action="store_true",
                        help="verify every record against the manifest; exit 1 on any mismatch")
    parser.add_argument("--samples", type=int, default=3, help="sample records to show (default: 3)")
    return parser


def cmd_inspect(argv: Sequence[str]) -> int:
    from pipeline.tools.inspect import format_inspection, inspect_feature_set

    args, beam_argv = split_flags(inspect_parser(), argv)
    use_storage_flags(beam_argv)  # gs:// and s3:// sets too (Beam's --s3_* flags)
    result = inspect_feature_set(args.output, samples=args.samples)
    print(format_inspection(result, args.check))
    return 1 if args.check and result.problems else 0


def export_parser() -> argparse.ArgumentParser:
    from pipeline.tools.export import TARGETS

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
    return parser


def cmd_export(argv: Sequence[str]) -> int:
    from pipeline.tools.export import ExportConfig, format_export, run_export

    own, beam_argv = split_flags(export_parser(), argv)
    options = use_storage_flags(with_local_defaults(beam_argv))
    config = ExportConfig.create(own.features, own.to, own.output, own.feature_dtype, own.overwrite)
    start = time.monotonic()
    summary = run_export(config, options)
    print(format_export(summary, config.output, time.monotonic() - start))
    return 0


def bench_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--onednn", choices=ONEDNN_CHOICES, default="auto",
                        help="TensorFlow's oneDNN kernels, as for extract (both measurements); run once with off "
                             "and once without to compare")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def cmd_bench(argv: Sequence[str]) -> int:
    from pipeline.tools.bench import format_bench, run_bench
    from transforms.worker.cpu import use_onednn

    own, beam_argv = split_flags(bench_parser(), argv)
    use_onednn(own.onednn)  # before this process imports TensorFlow
    if own.images is not None and not os.path.isdir(own.images):
        raise UsageError(f"--images {own.images} is not a directory")
    if (own.batch_size is not None and own.batch_size < 1) or own.count < 5 or not own.limit_seconds > 0:
        raise UsageError("--batch-size must be at least 1, --count at least 5 and --limit-seconds above 0")
    result = run_bench(own.backbone, own.images, own.batch_size, beam_argv, own.count,
                       log=lambda m: print(f"featurebeam bench: {m}", file=sys.stderr), weights=own.weights,
                       preprocessing=own.preprocessing, fold_batchnorm=not own.no_fold_batchnorm,
                       precision=own.precision, limit_seconds=own.limit_seconds, onednn=own.onednn)
    print(result.to_json() if own.json else format_bench(result))
    return 0


def layers_parser() -> argparse.ArgumentParser:
    from pipeline.backbones.hub.presets import TOWERS
    from pipeline.backbones.registry import available_backbones
    from transforms.embed.pooling import POOLINGS

    parser = Parser(prog="featurebeam layers", allow_abbrev=False,
                    description="The layers of a backbone worth extracting, with their output shapes and the bytes "
                                "each adds to a feature record after pooling.")
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help=f"one of {', '.join(available_backbones())}, keras:NAME, hub:PRESET, or a .keras/.h5 "
                             "model file")
    parser.add_argument("--tower", choices=TOWERS, default=None,
                        help="hub: presets with an image and a text tower (CLIP): which one (default: image)")
    parser.add_argument("--weights", metavar="PATH", help="keras:NAME backbones: a .weights.h5 of that architecture")
    parser.add_argument("--preprocessing", choices=("tf", "torch", "caffe", "raw"), default=None)
    parser.add_argument("--all", action="store_true", help="every layer, not only those worth extracting from")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS)
    return parser


def cmd_layers(argv: Sequence[str]) -> int:
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.tools.layers import format_layers

    args = layers_parser().parse_args(argv)
    spec = resolve_backbone(args.backbone, args.weights, args.preprocessing, tower=args.tower)
    print(format_layers(spec, args.pooling, args.all))
    return 0


def demo_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="featurebeam demo", allow_abbrev=False,
        description="Write scikit-learn's digits as PNG files in class folders and extract their features.")
    parser.add_argument("--workdir", default="featurebeam-demo", help="where images and features go")
    return parser


def cmd_demo(argv: Sequence[str]) -> int:
    from pipeline.tools.demo import run_demo

    own, beam_argv = split_flags(demo_parser(), argv)
    return run_demo(own.workdir, with_local_defaults(beam_argv))
