"""How every command reads its flags: its own (argparse, a mistake is one line) and Apache Beam's, which pass
through; a flag that neither knows is an error, never silently dropped. Local runs get the fastest local layout
unless the user names a runner."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline.errors import UsageError
from transforms.worker.storage import (
    DEFAULT_RETRY_SECONDS,
    bound_storage_retries,
    share_storage_options,
    use_storage_emulator,
)

__all__ = ["Parser", "split_flags", "with_local_defaults", "use_storage_flags", "use_storage_options", "DEFAULT_RUNNER",
           "DEFAULT_LOCAL_FLAGS"]

DEFAULT_RUNNER = "FnApiRunner"
DEFAULT_LOCAL_FLAGS = (f"--runner={DEFAULT_RUNNER}", "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2")


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``UsageError``) instead of the usage text and an exit."""

    def error(self, message):
        raise UsageError(message)


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
    """(our own flags as a namespace, the rest as given): the rest must be Beam flags, else a one-line error.
    Local defaults are not added here: a command that runs a pipeline adds them once (``with_local_defaults``)."""
    own, rest = parser.parse_known_args(argv)
    _, unknown = _beam_flag_parser().parse_known_args(rest)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} (neither featurebeam's nor Apache Beam's)")
    return own, list(rest)


def given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def with_local_defaults(argv: Sequence[str]) -> list[str]:
    """Without --runner: Beam's FnApiRunner (what DirectRunner runs batch jobs on, minus its Prism probe),
    with two worker processes, each with its own model and its share of the cores, so one decodes while the
    other runs the network (the fastest local layout measured, within the memory goal; see the README)."""
    if given(argv, "--runner"):
        return list(argv)
    defaults = [flag for flag in DEFAULT_LOCAL_FLAGS if not given(argv, flag.split("=")[0])]
    if given(argv, "--direct_num_workers") or given(argv, "--direct_running_mode"):
        defaults = [flag for flag in defaults if not flag.startswith("--direct_")]
    return [*argv, *defaults]


def use_storage_flags(beam_argv: Sequence[str]):
    """Beam's flags as this process's view of object storage (S3 endpoint and keys, GCS emulator), before any
    path is looked at; returns the pipeline options."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(beam_argv))
    use_storage_options(options)
    return options


def use_storage_options(options, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> None:
    """Let this process's own listing and checks see object storage as the workers will (S3 endpoint and keys,
    GCS emulator, how long a failing call is retried: extract's ``--storage-retry-seconds``)."""
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(options)
    use_storage_emulator()
    share_storage_options(options)
    bound_storage_retries(retry_seconds)
