"""The launcher's live progress line: records listed, read, embedded, failed, images/s (or texts/s), ETA."""

from __future__ import annotations

import sys
import threading
import time

from transforms.write.progress import read_progress

__all__ = ["ProgressLine", "format_progress", "rate_unit"]


def rate_unit(modality: str | None) -> str:
    """What a backbone of ``modality`` embeds, as rates name it: "texts" or "images" (the default)."""
    return {"text": "texts", "audio": "recordings"}.get(modality, "images")


def format_progress(counts: dict, seconds: float, unit: str = "images") -> str:
    """The line for ``counts`` (per stage: listed files, expected inputs, read, embedded, failed, skipped), its
    rate in ``unit`` ("images" or "texts") per second.

    The ETA counts inputs, not files: ``expected`` is the number of inputs the listed files hold (a tar shard
    or a manifest holds many), known once they are expanded; skipped inputs (``--resume``) are already done."""
    listed, embedded, failed = counts.get("listed", 0), counts.get("embedded", 0), counts.get("failed", 0)
    expected, skipped = counts.get("expected", 0), counts.get("skipped", 0)
    rate = embedded / seconds if seconds > 0 else 0.0
    done_rate = (embedded + failed) / seconds if seconds > 0 else 0.0
    line = (f"featurebeam: progress  listed {listed}, read {counts.get('read', 0)}, embedded {embedded}, "
            f"failed {failed}, {rate:.1f} {unit}/s")
    remaining = expected - embedded - failed - skipped
    if expected and done_rate > 0 and remaining >= 0:
        line += f", ETA {remaining / done_rate:.0f} s"
    return line


class ProgressLine:
    """A thread that prints the progress line on ``stream``: refreshed in place a few times a second on a
    terminal, one line every ``log_every`` seconds otherwise (logs)."""

    def __init__(self, directory: str, stream=None, log_every: float = 5.0, tty_every: float = 0.25,
                 unit: str = "images"):
        self._directory = directory
        self._unit = unit
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._every = tty_every if self._tty else log_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="featurebeam-progress", daemon=True)
        self._start = time.monotonic()
        self._last = ""

    def __enter__(self):
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._print(final=True)

    def _print(self, final: bool = False) -> None:
        line = format_progress(read_progress(self._directory), time.monotonic() - self._start, self._unit)
        if self._tty:
            self._stream.write("\r" + line.ljust(len(self._last)) + ("\n" if final else ""))
        elif line != self._last:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last = line

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._print()
