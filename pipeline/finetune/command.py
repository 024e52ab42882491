"""``featurebeam finetune``: its flags (``finetune_parser``) and the command (``cmd_finetune``), in the style of
the other ``cmd_*`` of ``pipeline.cli``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.flags import Parser, split_flags, use_storage_flags

__all__ = ["finetune_parser", "cmd_finetune", "config_from_args"]


def finetune_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="featurebeam finetune", allow_abbrev=False,
        description="Fine-tune the top blocks of a backbone on labelled images, starting from a linear probe, "
                    "BatchNorm frozen; export a serving model with the fine-tuned backbone.",
        epilog="Inputs and MODELDIR may be local, gs:// or s3://; Apache Beam's storage flags (--s3_endpoint_url "
               "...) pass through.")
    parser.add_argument("--input", action="append", required=True, metavar="TRAIN",
                        help="labelled images as extract reads them: a folder (first-level subfolders are labels), "
                             "a glob, .csv/.jsonl manifests, .tar shards, .tfrecord files (repeatable)")
    parser.add_argument("--test-input", action="append", default=[], metavar="TEST",
                        help="held-out labelled images, reported apart (repeatable)")
    parser.add_argument("--output", required=True, metavar="MODELDIR")
    _add_backbone_flags(parser)
    _add_training_flags(parser)
    _add_reading_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def _add_backbone_flags(parser: argparse.ArgumentParser) -> None:
    """The backbone and how many of its top blocks to train."""
    from pipeline.finetune.options import DEFAULT_UNFREEZE, FALLBACK_UNFREEZE

    defaults = ", ".join(f"{name} {k}" for name, k in DEFAULT_UNFREEZE.items())
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help="mobilenet_v2 (default), efficientnet_lite0, keras:NAME or a .keras/.h5 model file")
    parser.add_argument("--weights", metavar="PATH", help="keras:NAME backbones: a .weights.h5 of that architecture")
    parser.add_argument("--preprocessing", choices=("tf", "torch", "caffe", "raw"), default=None,
                        help="model files: what the model expects of pixels (default raw)")
    parser.add_argument("--no-fold-batchnorm", action="store_true",
                        help="keras:NAME and model files: keep BatchNorm as its own (frozen) layers instead of "
                             "folding it into the convolutions")
    parser.add_argument("--unfreeze", type=int, default=None, metavar="K",
                        help=f"the top K blocks to train, as 'featurebeam layers' lists them (default: {defaults}; "
                             f"{FALLBACK_UNFREEZE} for other backbones)")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The recipe: epochs, early stopping, the starting head, learning rates, dropout, batches and the split."""
    from pipeline.finetune.options import (
        AUGMENTATIONS,
        DEFAULT_DROPOUT,
        DEFAULT_EPOCHS,
        DEFAULT_HEAD_LR_FACTOR,
        DEFAULT_LEARNING_RATE,
        DEFAULT_PATIENCE,
    )

    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, metavar="N",
                        help=f"epochs of the cosine schedule; the epoch of lowest validation log-loss is kept "
                             f"(default: {DEFAULT_EPOCHS})")
    parser.add_argument("--patience", type=int, default=DEFAULT_PATIENCE,
                        help=f"epochs without a lower validation log-loss before stopping early (default: "
                             f"{DEFAULT_PATIENCE}: no early stop within the default epochs)")
    parser.add_argument("--head-from", metavar="MODELDIR",
                        help="start from the head of a featurebeam train MODELDIR (same backbone) instead of "
                             "fitting a linear probe first")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE,
                        help=f"Adam learning rate of the unfrozen blocks (default: {DEFAULT_LEARNING_RATE:g})")
    parser.add_argument("--head-lr-factor", type=float, default=DEFAULT_HEAD_LR_FACTOR,
                        help=f"the head's learning rate is this times --learning-rate (default: "
                             f"{DEFAULT_HEAD_LR_FACTOR:g})")
    parser.add_argument("--dropout", type=float, default=DEFAULT_DROPOUT,
                        help=f"dropout on the pooled features while training, 0 for none (default: "
                             f"{DEFAULT_DROPOUT:g})")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share of the inputs held out for validation, by a hash of each key (default: 0.2)")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="none",
                        help="random crops (and flips) each epoch; the frozen bottom then runs every epoch instead "
                             "of once (default: none)")


def _add_reading_flags(parser: argparse.ArgumentParser) -> None:
    """Where the frozen bottom's outputs are cached, and how records are read and decoded."""
    from transforms.decode.images import DEFAULT_MAX_PIXELS
    from transforms.read.input_specs import IMAGE_FORMATS
    from transforms.read.tables import InputFields

    fields = InputFields()
    parser.add_argument("--cache-memory-mb", type=int, default=1024,
                        help="the frozen bottom's outputs stay in memory up to this size, else are memory-mapped "
                             "from disk (default: 1024)")
    parser.add_argument("--cache-dir", metavar="DIR", help="local folder for the on-disk cache (default: a "
                                                            "temporary folder)")
    parser.add_argument("--input-format", default="auto", choices=("auto",) + IMAGE_FORMATS)
    parser.add_argument("--uri-field", default=None, metavar="NAME", help="manifest column with each file's URI")
    parser.add_argument("--label-field", default=fields.label, metavar="NAME",
                        help=f"manifest column or tar sample .json field with the label (default: {fields.label})")
    parser.add_argument("--image-feature", default=fields.image_feature, metavar="NAME",
                        help=f"TFRecord inputs: the encoded image (default: {fields.image_feature})")
    parser.add_argument("--label-feature", default=fields.label_feature, metavar="NAME",
                        help=f"TFRecord inputs: the label (default: {fields.label_feature})")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N")


def config_from_args(args):
    from pipeline.finetune.options import FinetuneConfig
    from pipeline.folders import absolute
    from transforms.read.tables import InputFields

    fields = InputFields(uri=args.uri_field, label=args.label_field, image_feature=args.image_feature,
                         label_feature=args.label_feature)
    return FinetuneConfig(
        inputs=tuple(args.input), test_inputs=tuple(args.test_input), output=absolute(args.output),
        backbone=args.backbone, weights=args.weights, preprocessing=args.preprocessing,
        fold_batchnorm=not args.no_fold_batchnorm, unfreeze=args.unfreeze,
        epochs=args.epochs, patience=args.patience, head_from=args.head_from, learning_rate=args.learning_rate,
        head_lr_factor=args.head_lr_factor, dropout=args.dropout, batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        augment=args.augment, cache_memory_mb=args.cache_memory_mb, cache_dir=args.cache_dir,
        input_format=args.input_format, fields=fields, max_image_pixels=args.max_image_pixels,
        overwrite=args.overwrite, seed=args.seed).validate()


def cmd_finetune(argv: Sequence[str]) -> int:
    from pipeline.finetune.run import format_finetune, run_finetune

    args, beam_argv = split_flags(finetune_parser(), argv)
    use_storage_flags(beam_argv)  # before any input or MODELDIR is looked at
    config = config_from_args(args)
    report = run_finetune(config, log=lambda m: print(m, file=sys.stderr))
    print(format_finetune(report, config.output))
    return 0
