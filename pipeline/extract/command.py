"""``featurebeam extract``: its flags (``extract_parser``, from ``ExtractOptions``) and the command
(``cmd_extract``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from pipeline.flags import Parser, split_flags, with_local_defaults

__all__ = ["extract_parser", "cmd_extract", "with_update_flag"]


def extract_parser() -> argparse.ArgumentParser:
    from pipeline.extract.options import UPDATE_HELP, ExtractOptions

    parser = Parser(
        prog="featurebeam extract", allow_abbrev=False,
        description="Extract features of images or texts with a frozen backbone into sharded TFRecords "
                    "(and/or Parquet).",
        epilog="Any Apache Beam option passes through, e.g. --runner DataflowRunner, "
               "--direct_num_workers 2 --direct_running_mode multi_processing.")
    ExtractOptions._add_argparse_args(parser)
    parser.add_argument("--update", action="store_true", help=UPDATE_HELP)
    return parser


def with_update_flag(argv: Sequence[str]) -> list[str]:
    """``--update`` as featurebeam's own flag: Beam's PipelineOptions name one ``--update`` already."""
    from pipeline.extract.options import UPDATE_FLAG

    return [UPDATE_FLAG if arg == "--update" else arg for arg in argv]


def cmd_extract(argv: Sequence[str]) -> int:
    if "-h" in argv or "--help" in argv:
        extract_parser().print_help()
        return 0
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    from pipeline.extract.dataflow import dataflow_defaults
    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import configure
    from pipeline.extract.options import ExtractOptions
    from pipeline.extract.runtime import runner_name
    from pipeline.extract.summary import format_staged, format_summary, input_notes, large_record_warnings
    from transforms.worker.cpu import use_onednn

    split_flags(extract_parser(), argv)  # rejects flags that neither featurebeam nor Beam knows
    argv = with_update_flag(argv)
    argv = with_local_defaults(argv)
    defaults = dataflow_defaults(PipelineOptions(argv))
    if defaults:
        print(f"featurebeam extract: Dataflow defaults: {' '.join(defaults)}", file=sys.stderr)
    options = PipelineOptions([*argv, *defaults])
    use_onednn(options.view_as(ExtractOptions).onednn)  # before this process imports TensorFlow
    config = configure(options)
    for warning in large_record_warnings(config.embed.outputs):
        print(warning, file=sys.stderr)
    for note in [] if config.quiet else input_notes(config):
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
