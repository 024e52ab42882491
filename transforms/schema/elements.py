"""The elements that flow between the transforms: a raw record, and a failure that says why."""

from __future__ import annotations

import json
from typing import NamedTuple

__all__ = ["SourceFile", "FileRef", "Record", "Failure", "FAILED", "METRICS_NAMESPACE", "error_message"]

FAILED = "failed"  # tag of every transform's failure output
METRICS_NAMESPACE = "featurebeam"  # every Beam metric of the project, so the Dataflow UI groups them


class SourceFile(NamedTuple):
    """A listed file and how to read it: one input (``files``) or many (a manifest, an archive, text)."""

    uri: str
    label: str | None
    format: str = "files"


class FileRef(NamedTuple):
    """One input that is a whole file of its own: a loose file, or a row of a manifest."""

    key: str
    uri: str
    label: str | None
    split: str | None = None


class Record(NamedTuple):
    """One input: its stable key, raw payload (encoded image bytes, or ``str`` for text), label, split, and the
    file it was read from (a tar shard, a TFRecord or text file, the file a manifest row names; None: the key)."""

    key: str
    payload: bytes | str
    label: str | None
    split: str | None = None
    source: str | None = None

    @property
    def origin(self) -> str:
        """The file this record was read from, for its failures: ``source``, else the key."""
        return self.key if self.source is None else self.source


class Failure(NamedTuple):
    """A record that could not be processed: which one, at which stage, and why."""

    key: str
    source: str
    stage: str
    error_type: str
    message: str

    @property
    def reason(self) -> str:
        return f"{self.stage}: {self.error_type}"

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_exception(cls, key: str, source: str, stage: str, error: BaseException) -> Failure:
        return cls(key, source, stage, type(error).__name__, error_message(error))


# Lines of an error message that say where, not what (TensorFlow's graph errors are mostly these).
_NOISE = ("File ", "Detected at node", "Graph execution error", "[[", "Traceback")


def error_message(error: BaseException, limit: int = 500) -> str:
    """One line that says what went wrong: the first line of the message that is not a location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(_NOISE)]
    return (meaningful or lines or [type(error).__name__])[0][:limit]
