"""An OUTDIR a command may write: checked at launch (empty, or ``--overwrite``; writable) and cleared of what the
command itself wrote before, nothing else.
"""

from __future__ import annotations

import os

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ConfigError
from pipeline.folders import objects_under
from pipeline.inputs import first_line, missing_bucket
from transforms.schema.layout import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    MANIFEST_NAME,
    PENDING_DIR,
    RETIRED_DIR,
    RUN_NAME,
    UPDATE_NAME,
)
from transforms.worker.storage import is_remote

__all__ = ["check_output_dir", "clear_previous_outputs"]


def check_output_dir(output: str, overwrite: bool) -> None:
    """Refuse a non-empty OUTDIR without --overwrite; prove the directory is writable."""
    if not is_remote(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"output {output} exists and is not a directory")
        if os.path.isdir(output) and os.listdir(output) and not overwrite:
            raise ConfigError(f"output {output} is not empty; pass --overwrite to replace its features, or "
                              "--resume to finish the run that wrote them")
        try:
            os.makedirs(output, exist_ok=True)
            probe = os.path.join(output, ".featurebeam-write-test")
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"output {output} is not writable: {e.strerror or e}") from None
    else:
        missing = missing_bucket(output)
        if missing:
            raise ConfigError(f"output {output}: {missing}")
        try:
            (existing,) = FileSystems.match([FileSystems.join(output, "**")], limits=[1])
        except Exception as e:
            raise ConfigError(f"cannot list output {output}: {first_line(e)}") from None
        if existing.metadata_list and not overwrite:
            raise ConfigError(f"output {output} is not empty; pass --overwrite to replace its features, or "
                              "--resume to finish the run that wrote them")
        probe = FileSystems.join(output, ".featurebeam-write-test")
        try:
            with FileSystems.create(probe) as f:
                f.write(b"featurebeam write test\n")  # not empty: Beam's S3 writer cannot complete an empty upload
            FileSystems.delete([probe])
        except Exception as e:
            raise ConfigError(f"output {output} is not writable: {first_line(e)}") from None


def clear_previous_outputs(output: str, names=(MANIFEST_NAME, RUN_NAME, UPDATE_NAME, FEATURES_DIR, ERRORS_DIR,
                                              COMMITS_DIR, PENDING_DIR, RETIRED_DIR)) -> None:
    """What --overwrite replaces: the job's own outputs (by default the features, dead letters and
    manifest of an extraction), nothing else. Object stores have no folders: a folder there is every object
    under its prefix."""
    paths = []
    for name in names:
        path = FileSystems.join(output, name)
        if FileSystems.exists(path):  # a file, or a local folder (deleted with what it holds)
            paths.append(path)
        elif is_remote(output):
            paths += objects_under(path)
    if paths:
        FileSystems.delete(paths)
