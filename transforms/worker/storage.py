"""Object storage helpers shared by the launcher and the workers: emulators, bounded retries, bucket checks.

``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` points every gs:// path at a local GCS emulator. The GCS client
library honours it, but Beam first looks for Google credentials, which without any configured means probing
the metadata server and retrying for about half a minute per process. With an emulator there is nothing to
authenticate against, so ``use_storage_emulator`` tells Beam up front to connect anonymously.

Importing changes nothing: ``ready_storage()`` does it, once per process, where work starts: a command, and
the ``setup()`` of every DoFn (and ``load_model()`` of every handler) that reads or writes files, so each
worker process is ready before its first read. A GCS call that keeps failing is retried for a bounded time
(``bound_storage_retries``, ``--storage-retry-seconds``), so an outage fails a run in about a minute with its
reason instead of many times the client library's 120 s per call.
"""

from __future__ import annotations

import os

__all__ = ["is_remote", "ready_storage", "bound_storage_retries", "use_storage_emulator", "bucket_of", "bucket_exists",
           "share_storage_options", "adopt_storage_options"]

_SHARED = "FEATUREBEAM_STORAGE_OPTIONS"    # the launcher's S3 flags, for local worker processes
_RETRY_ENV = "FEATUREBEAM_STORAGE_RETRY_S"  # the launcher's --storage-retry-seconds, for local worker processes
DEFAULT_RETRY_SECONDS = 60.0
_READY = False


def is_remote(path: str) -> bool:
    """Whether a path is an object-store URI (gs://, s3://) rather than a local path."""
    return "://" in path


def ready_storage() -> None:
    """This process sees object storage as the job should: the GCS emulator when one is named, the launcher's
    S3 flags in local worker processes, and GCS calls retried for a bounded time. Idempotent; the first call
    does the work."""
    global _READY
    if not _READY:
        use_storage_emulator()
        adopt_storage_options()
        bound_storage_retries(float(os.environ.get(_RETRY_ENV, DEFAULT_RETRY_SECONDS)), share=False)
        _READY = True


def bound_storage_retries(seconds: float, share: bool = True) -> None:
    """Retry a failing GCS call for at most ``seconds`` (the client library's default is 120 s per call, and a
    job makes many): an outage then fails the run promptly, with the reason. ``share``: local worker processes
    that this process starts do the same."""
    try:
        from apache_beam.io.gcp import gcsio_retry
    except ImportError:  # Beam without its GCP extra: nothing to bound
        return
    bounded = gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER.with_timeout(seconds)
    gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER = bounded
    _bound_metadata_reloads(bounded)
    if share:
        os.environ[_RETRY_ENV] = repr(float(seconds))


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


def _bound_metadata_reloads(retry) -> None:
    """Beam's GCS reader reloads an object's metadata with the client library's own default retry (120 s),
    not the one Beam is given: reloads without an explicit retry get ``retry`` too."""
    from google.cloud.storage import _helpers

    reload = _helpers._PropertyMixin.reload
    original = getattr(reload, "__wrapped__", reload)

    def bounded_reload(self, *args, **kwargs):
        kwargs.setdefault("retry", retry)
        return original(self, *args, **kwargs)

    bounded_reload.__wrapped__ = original
    _helpers._PropertyMixin.reload = bounded_reload


def share_storage_options(options) -> None:
    """Launcher: hand the S3 flags (endpoint, keys, region) to local worker processes, which Beam starts without
    the pipeline options (a remote runner's workers get them from the service)."""
    import json

    given = {k: v for k, v in options.get_all_options(drop_default=True).items() if k.startswith("s3_")}
    if given:
        os.environ[_SHARED] = json.dumps(given)


def adopt_storage_options() -> bool:
    """Worker: add the launcher's S3 flags to this process's options where it has none of its own."""
    import json

    shared = os.environ.get(_SHARED)
    if not shared:
        return False
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    current = FileSystems._pipeline_options
    own = current.get_all_options(drop_default=True) if current is not None else {}
    if any(k.startswith("s3_") for k in own):
        return False
    FileSystems.set_options(PipelineOptions.from_dictionary({**own, **json.loads(shared)}))
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
