"""``featurebeam``: the command line.

    featurebeam extract --input DIR_OR_GLOB --output OUTDIR [--backbone NAME] [--batch-size N] [Beam flags]
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported, here or in workers

__all__ = ["main"]


class UsageError(ValueError):
    pass


def _beam_flag_parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = set()
    for cls in PipelineOptions.__subclasses__():
        if cls.__name__ not in seen:
            seen.add(cls.__name__)
            cls._add_argparse_args(parser)
    return parser


def split_flags(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """Our own flags -> namespace; the rest must be Beam flags, else a one-line error."""
    own, rest = parser.parse_known_args(argv)
    _, unknown = _beam_flag_parser().parse_known_args(rest)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} (neither featurebeam's nor Apache Beam's)")
    return own, with_local_defaults(rest)


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def with_local_defaults(argv: Sequence[str]) -> list[str]:
    """Without --runner: Beam's FnApiRunner (what DirectRunner runs batch jobs on, minus its Prism probe),
    with two worker threads sharing one model, so decoding overlaps inference (the fastest local layout
    measured; see the README)."""
    from pipeline.options import DEFAULT_LOCAL_FLAGS

    if _given(argv, "--runner"):
        return list(argv)
    defaults = [flag for flag in DEFAULT_LOCAL_FLAGS if not _given(argv, flag.split("=")[0])]
    if _given(argv, "--direct_num_workers") or _given(argv, "--direct_running_mode"):
        defaults = [flag for flag in defaults if not flag.startswith("--direct_")]
    return [*argv, *defaults]


def _extract_parser() -> argparse.ArgumentParser:
    from pipeline.options import ExtractOptions

    parser = argparse.ArgumentParser(
        prog="featurebeam extract", allow_abbrev=False,
        description="Extract features of images with a frozen backbone into sharded TFRecords.",
        epilog="Any Apache Beam option passes through, e.g. --runner DataflowRunner, "
               "--direct_num_workers 2 --direct_running_mode multi_processing.")
    ExtractOptions._add_argparse_args(parser)
    return parser


def format_summary(manifest, output: str, seconds: float) -> str:
    c = manifest.counts
    rate = c["embedded"] / seconds if seconds > 0 else 0.0
    lines = [f"featurebeam: embedded {c['embedded']} of {c['inputs']} inputs ({c['failed']} failed) "
             f"in {seconds:.1f} s ({rate:.1f} images/s)",
             f"  backbone  {manifest.backbone['name']} (weights sha256 {manifest.backbone['weights_sha256'][:16]}...)"]
    for o in manifest.outputs:
        lines.append(f"  output    {o.name}: {o.dim} x {o.dtype}, pooling {o.pooling}, Example key {o.example_key!r}")
    if manifest.labels:
        shown = ", ".join(manifest.labels[:12]) + (" ..." if len(manifest.labels) > 12 else "")
        lines.append(f"  labels    {len(manifest.labels)}: {shown}")
    lines.append(f"  shards    {len(manifest.shards)} in {output.rstrip('/')}/features/")
    lines.append(f"  manifest  {output.rstrip('/')}/manifest.json")
    for reason, n in sorted(manifest.failures_by_reason.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  failed    {n} x {reason} (details in {output.rstrip('/')}/errors/)")
    return "\n".join(lines)


def cmd_extract(argv: Sequence[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract import run_extraction
    from pipeline.options import ExtractConfig

    split_flags(_extract_parser(), argv)  # rejects flags that neither featurebeam nor Beam knows
    options = PipelineOptions(with_local_defaults(argv))
    config = ExtractConfig.from_options(options)
    start = time.monotonic()
    manifest = run_extraction(config, options)
    print(format_summary(manifest, config.output, time.monotonic() - start))
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from pipeline.demo import run_demo

    parser = argparse.ArgumentParser(
        prog="featurebeam demo", allow_abbrev=False,
        description="Write scikit-learn's digits as PNG files in class folders and extract their features.")
    parser.add_argument("--workdir", default="featurebeam-demo", help="where images and features go")
    own, beam_argv = split_flags(parser, argv)
    return run_demo(own.workdir, beam_argv)


COMMANDS = {"extract": cmd_extract, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: featurebeam {extract,demo} ...\n\n"
              "  extract  extract backbone features of images into sharded TFRecords + manifest.json\n"
              "  demo     run the extraction on scikit-learn's digits\n\n"
              "Run 'featurebeam COMMAND --help' for a command's options.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "extract" and ("-h" in rest or "--help" in rest):
        _extract_parser().print_help()
        return 0
    from pipeline.backbones import BackboneUnavailableError, UnknownBackboneError
    from pipeline.options import ConfigError

    try:
        return COMMANDS[command](rest)
    except (UsageError, ConfigError, UnknownBackboneError, BackboneUnavailableError) as e:
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
