"""The names inside a feature set's folder (OUTDIR): the contract between the writers, ``--resume`` and every reader.

::

    OUTDIR/
      manifest.json     the finished set, whole (``transforms.schema.manifest``)
      run.json          the settings the run started with (what ``--resume`` must match)
      lease.json        the live run's claim on OUTDIR; absent when none runs
      features/         part-<id>.tfrecord (and/or .parquet) shards
      errors/           part-<id>.jsonl dead-letter files, one failure a line
      commits/          <id>.json commit record, <id>.keys keys file and <id>.sources sources file per
                        committed file
      retired/          commit records of damaged files, moved aside by ``--resume``
      .pending/         files being written; never read
"""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "FEATURES_DIR", "ERRORS_DIR", "COMMITS_DIR", "PENDING_DIR", "RETIRED_DIR",
           "LEASE_NAME", "RUN_NAME", "UPDATE_NAME", "MANIFEST_NAME", "SHARD_PREFIX", "SHARD_SUFFIX", "PARQUET_SUFFIX",
           "FORMATS", "shard_format", "join"]

FORMAT_VERSION = 1
FEATURES_DIR = "features"
ERRORS_DIR = "errors"
COMMITS_DIR = "commits"    # one commit record per committed features/ or errors/ file
PENDING_DIR = ".pending"   # files being written; never read
RETIRED_DIR = "retired"    # commit records of damaged files, moved out of commits/ by --resume (inputs redone)
LEASE_NAME = "lease.json"  # the live run's claim on OUTDIR (owner, heartbeat); absent when none runs
RUN_NAME = "run.json"      # the settings a run was started with (what --resume must match)
MANIFEST_NAME = "manifest.json"
UPDATE_NAME = "update.json"  # an --update in progress: the generation it makes (gone once it is published)
SHARD_PREFIX = "part"
SHARD_SUFFIX = ".tfrecord"
PARQUET_SUFFIX = ".parquet"
FORMATS = {"tfrecord": SHARD_SUFFIX, "parquet": PARQUET_SUFFIX}  # --format: what shards are written as


def shard_format(path: str) -> str:
    """"parquet" or "tfrecord", from a shard's name."""
    return "parquet" if path.endswith(PARQUET_SUFFIX) else "tfrecord"


def join(root: str, name: str) -> str:
    """``root/name`` for a local, gs:// or s3:// root."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(root, name)
