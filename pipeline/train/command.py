"""``featurebeam train``: its flags (``train_parser``) and the command (``cmd_train``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.errors import UsageError
from pipeline.flags import Parser, split_flags, use_storage_flags

__all__ = ["train_parser", "cmd_train"]


def train_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="the share of records that validate when the sets have no split column naming "
                             "validation records (default 0.2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="draws another validation split (and folds, and MLP initialisation) on purpose; the "
                             "same seed and data give the same split wherever the data lives (default 0)")
    parser.add_argument("--class-weights", action="store_true", help="weight classes inversely to their frequency")
    parser.add_argument("--no-standardize", dest="standardize", action="store_false",
                        help="fit the linear probe on the raw features, as the CLIP paper's linear probes do "
                             "(default: standardised by the training records' mean and deviation, folded into "
                             "the exported weights)")
    parser.add_argument("--memory-limit-mb", type=int, default=2048,
                        help="feature sets larger than this stream from disk instead of loading (default: 2048; "
                             "in-memory training peaks near 1 GB + 3 x the features)")
    parser.add_argument("--sweep-layers", action="store_true",
                        help="train a linear probe on every extracted layer, report which transfers best "
                             "(layer_sweep.json, layer_sweep.png), then train the heads on that layer")
    parser.add_argument("--zero-shot", action="store_true",
                        help="also (or, for a set without labels, only) a zero-shot head made from the text tower "
                             "of the CLIP preset the image features came from (hub:...): no labels needed")
    parser.add_argument("--classes", metavar="A,B,...",
                        help="--zero-shot: the class names, comma-separated (the set's labels when it has them)")
    parser.add_argument("--template", action="append", metavar="TEXT",
                        help="--zero-shot: a prompt with {} where the class name goes (repeatable: the prompts "
                             "are averaged; default: 'a photo of a {}.')")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def cmd_train(argv: Sequence[str]) -> int:
    from pipeline.folders import absolute
    from pipeline.train.config import TrainConfig
    from pipeline.train.layer_sweep import run_layer_sweep
    from pipeline.train.run import run_training
    from pipeline.train.summary import format_layer_sweep, format_training

    args, beam_argv = split_flags(train_parser(), argv)
    use_storage_flags(beam_argv)
    zero_shot = _zero_shot_flags(args)
    config = TrainConfig(features=tuple(args.features), output=absolute(args.output),
                         heads=tuple(dict.fromkeys(args.head or ["linear"])), output_name=args.output_name,
                         test_features=tuple(args.test_features), validation_fraction=args.validation_fraction,
                         class_weights=args.class_weights, standardize=args.standardize,
                         memory_limit_mb=args.memory_limit_mb, seed=args.seed, overwrite=args.overwrite,
                         **zero_shot)
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


def _zero_shot_flags(args) -> dict:
    """--zero-shot, --classes and --template as TrainConfig fields; either of the last two alone is refused."""
    from pipeline.train.zero_shot import DEFAULT_TEMPLATES

    if not args.zero_shot:
        if args.classes or args.template:
            raise UsageError("--classes and --template are for --zero-shot")
        return {}
    if not args.classes:
        raise UsageError("--zero-shot needs --classes A,B,... (the class names its prompts are made of)")
    if args.sweep_layers:
        raise UsageError("--zero-shot scores the image_embedding layer; leave out --sweep-layers")
    classes = tuple(name.strip() for name in args.classes.split(","))
    return {"zero_shot": classes, "templates": tuple(args.template or DEFAULT_TEMPLATES)}
