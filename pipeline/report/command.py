"""``featurebeam report``: its flags (``report_parser``) and the command (``cmd_report``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline.flags import Parser, split_flags, use_storage_flags

__all__ = ["report_parser", "cmd_report"]


def report_parser() -> argparse.ArgumentParser:
    from pipeline.report.audio_previews import MAX_PLAYERS
    from pipeline.report.page import MAX_THUMBNAILS

    parser = Parser(prog="featurebeam report", allow_abbrev=False,
                    description="Write one self-contained HTML page about a feature set.",
                    epilog="Paths may be local, gs:// or s3://; Apache Beam's storage flags (--s3_endpoint_url ...) "
                           "pass through.")
    parser.add_argument("output", metavar="OUTDIR", help="a feature set written by featurebeam extract")
    parser.add_argument("--model", metavar="MODELDIR", help="also show a trained model's metrics")
    parser.add_argument("--html", metavar="FILE", help="where to write the page (default: OUTDIR/report.html)")
    parser.add_argument("--max-thumbnails", type=int, default=MAX_THUMBNAILS, metavar="N",
                        help="embed at most N thumbnails (or text lines, or spectrograms for audio) in the page, "
                             f"all sections together (default {MAX_THUMBNAILS})")
    parser.add_argument("--max-players", type=int, default=MAX_PLAYERS, metavar="N",
                        help="audio feature sets: give at most N recordings of the samples per class a player of "
                             f"their first seconds, about 430 KB each in the page (default {MAX_PLAYERS})")
    return parser


def cmd_report(argv: Sequence[str]) -> int:
    from pipeline.report.page import build_report

    args, beam_argv = split_flags(report_parser(), argv)
    use_storage_flags(beam_argv)
    from apache_beam.io.filesystems import FileSystems

    path = args.html or FileSystems.join(args.output, "report.html")
    text = build_report(args.output, args.model, max_thumbnails=args.max_thumbnails, max_players=args.max_players)
    with FileSystems.create(path, mime_type="text/html") as f:
        f.write(text.encode("utf-8"))
    print(f"featurebeam: report written to {path} ({len(text) // 1024} KB)")
    return 0
