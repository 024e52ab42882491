"""Real object-storage servers on 127.0.0.1 for tests: a GCS emulator and a moto S3 server.

Each runs as its own process on a free port, started by a fixture and stopped when the tests are done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error status: the server answers
                return
            time.sleep(0.2)
    raise RuntimeError(f"server for {url} did not start within {timeout:.0f} s")


def _executable(name: str) -> str:
    found = os.path.join(os.path.dirname(sys.executable), name)
    return found if os.path.exists(found) else shutil.which(name) or name


@contextlib.contextmanager
def _server(command: list[str], url: str, log_path: str) -> Iterator[None]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_serving(url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass(frozen=True)
class GcsEmulator:
    host: str  # http://127.0.0.1:PORT, the value of STORAGE_EMULATOR_HOST

    def create_bucket(self, name: str) -> None:
        from google.cloud import storage

        storage.Client.create_anonymous_client().create_bucket(name)


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def beam_flags(self) -> list[str]:
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={S3_KEYS['aws_access_key_id']}",
                f"--s3_secret_access_key={S3_KEYS['aws_secret_access_key']}",
                f"--s3_region_name={S3_KEYS['region_name']}"]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **S3_KEYS)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


@contextlib.contextmanager
def gcs_emulator(log_dir: str) -> Iterator[GcsEmulator]:
    port = free_port()
    command = [_executable("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
               "--in-memory", "--quiet"]
    with _server(command, f"http://127.0.0.1:{port}/storage/v1/b", os.path.join(log_dir, "gcs-emulator.log")):
        yield GcsEmulator(f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def s3_server(log_dir: str) -> Iterator[S3Server]:
    port = free_port()
    command = [_executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with _server(command, f"http://127.0.0.1:{port}/", os.path.join(log_dir, "moto.log")):
        yield S3Server(f"http://127.0.0.1:{port}")


def upload_tree(local_root: str, remote_root: str) -> list[str]:
    """Copy every file under ``local_root`` to ``remote_root`` through Beam's FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    written = []
    for folder, _, files in os.walk(local_root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_root).replace(os.sep, "/")
            target = f"{remote_root.rstrip('/')}/{rel}"
            with open(os.path.join(folder, name), "rb") as src, FileSystems.create(target) as dst:
                dst.write(src.read())
            written.append(target)
    return written
