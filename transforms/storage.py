"""Object storage helpers shared by the launcher and the workers: emulators and bucket checks.

``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` points every gs:// path at a local GCS emulator. The GCS client
library honours it, but Beam first looks for Google credentials, which without any configured means probing
the metadata server and retrying for about half a minute per process. With an emulator there is nothing to
authenticate against, so ``use_storage_emulator`` tells Beam up front to connect anonymously. Importing
``transforms`` calls it, so every worker process that runs our transforms does the same.
"""

from __future__ import annotations

import os

__all__ = ["use_storage_emulator", "bucket_of", "bucket_exists"]


def use_storage_emulator() -> bool:
    """With ``STORAGE_EMULATOR_HOST`` set: anonymous GCS access in this process, no credential probing."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return False
    os.environ.setdefault("NO_GCE_CHECK", "true")
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # Beam without its GCP extra: nothing to configure
        return False
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True


def bucket_of(uri: str) -> tuple[str, str] | None:
    """(scheme, bucket) of a gs:// or s3:// URI; None for anything else."""
    for scheme in ("gs", "s3"):
        if uri.startswith(f"{scheme}://"):
            return scheme, uri[len(scheme) + 3:].split("/", 1)[0]
    return None


def bucket_exists(uri: str, options=None) -> bool | None:
    """Whether the bucket of a gs:// or s3:// URI exists (None: not a bucket URI, or it cannot be told)."""
    found = bucket_of(uri)
    if found is None:
        return None
    scheme, bucket = found
    try:
        if scheme == "gs":
            from apache_beam.io.gcp import gcsio

            return gcsio.GcsIO(pipeline_options=options).client.lookup_bucket(bucket) is not None
        from apache_beam.io.aws.clients.s3 import boto3_client
        from apache_beam.options.pipeline_options import PipelineOptions

        client = boto3_client.Client(options or PipelineOptions()).client
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as e:
        status = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
        if status in ("404", "NoSuchBucket"):
            return False
        return None
