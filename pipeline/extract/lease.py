"""One run at a time on an OUTDIR: a lease file (``OUTDIR/lease.json``) with its owner and a heartbeat.

A run takes the lease before it changes anything in OUTDIR and gives it back when it ends, however it ends.
Another run that finds a live lease is refused with one line naming the owner. A lease is stale when its
heartbeat is older than ``STALE_AFTER_S``, or when its owner was a process of this machine that no longer
exists (a run killed with ``kill -9``); ``--resume`` and ``--overwrite`` take a stale lease over, and say so.

Taking it: on local disk an exclusive create (``O_EXCL``), so two runs cannot both win. Object stores offer
no such primitive through Beam's filesystems: the lease is written, read back after ``SETTLE_S`` and kept only
if it is still this run's, which makes a tie between two runs started within that pause unlikely, not
impossible. The heartbeat is rewritten every ``HEARTBEAT_S`` by a daemon thread of the launcher.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ConfigError
from transforms.schema.layout import LEASE_NAME, PENDING_DIR
from transforms.worker.storage import is_remote
from transforms.write.commit_format import write_atomically

__all__ = ["OutputLease", "LeaseError", "HEARTBEAT_S", "STALE_AFTER_S"]

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
SETTLE_S = 2.0


class LeaseError(ConfigError):
    """Another run holds OUTDIR."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def describe(lease: dict) -> str:
    return f"{lease.get('owner', '?')} (pid {lease.get('pid', '?')} on {lease.get('host', '?')}, since " \
           f"{lease.get('started', '?')})"


def staleness(lease: dict, now: float | None = None) -> str | None:
    """Why a lease no longer holds (no heartbeat for a while, its process is gone), or None while it is live."""
    now = time.time() if now is None else now
    silent = now - float(lease.get("heartbeat", 0))
    if silent > STALE_AFTER_S:
        return f"no heartbeat for {silent:.0f} s"
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) \
            and not _pid_alive(lease["pid"]):
        return f"its process {lease['pid']} on this machine has ended"
    return None


class OutputLease:
    """``with OutputLease(output, takeover=..., log=...):`` holds OUTDIR for the block (see the module)."""

    def __init__(self, output: str, takeover: bool, log=print):
        self._output = output
        self._path = FileSystems.join(output, LEASE_NAME)
        self._takeover = takeover
        self._log = log
        self._token = uuid.uuid4().hex
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._stop = threading.Event()
        self._thread = None

    def _record(self) -> bytes:
        return json.dumps({"owner": f"{getpass.getuser()}@{socket.gethostname()}", "host": socket.gethostname(),
                           "pid": os.getpid(), "token": self._token, "started": self._started,
                           "heartbeat": time.time()}).encode("utf-8")

    def _read(self) -> dict | None:
        try:
            with FileSystems.open(self._path, compression_type="uncompressed") as f:
                return json.loads(f.read().decode("utf-8"))
        except Exception:  # none, or unreadable (a half-written lease of a crashed run): nobody holds it
            return None

    def _write(self) -> None:
        """Replace the lease with this run's record (pending name, then renamed)."""
        write_atomically(self._path, FileSystems.join(self._output, PENDING_DIR, f"{LEASE_NAME}.{self._token}"),
                         self._record())

    def _create_exclusively(self) -> bool:
        """Local disk: create the lease only if there is none; False when another run's is there."""
        os.makedirs(self._output, exist_ok=True)
        try:
            handle = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as f:
            f.write(self._record())
        return True

    def acquire(self) -> None:
        local = not is_remote(self._output)
        if local and self._create_exclusively():
            return self._start_heartbeat()
        held = self._read()
        if held is not None:
            why = staleness(held)
            if why is None:
                raise LeaseError(f"output {self._output} is in use by another run: {describe(held)}, heartbeat "
                                 f"{time.time() - float(held.get('heartbeat', 0)):.0f} s ago; wait for it to end "
                                 "or choose another --output")
            if not self._takeover:
                raise LeaseError(f"output {self._output} holds the lease of a run that stopped ({why}): "
                                 f"{describe(held)}; pass --resume to finish that run, or --overwrite")
            self._log(f"featurebeam extract: taking over the lease of {describe(held)}: {why}")
        self._write()
        time.sleep(SETTLE_S)  # a replaced lease (object stores, a stale one taken over): make sure it stayed ours
        mine = self._read()
        if not mine or mine.get("token") != self._token:
            raise LeaseError(f"output {self._output} was claimed by another run at the same moment: "
                             f"{describe(mine or {})}")
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="featurebeam-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held = self._read()
            if held is not None and held.get("token") != self._token:
                self._log(f"featurebeam extract: warning: another run took over {self._output}: {describe(held)}")
                return
            try:
                self._write()
            except Exception as e:  # a missed beat is not fatal; the next one may get through
                self._log(f"featurebeam extract: warning: lease heartbeat failed: {type(e).__name__}: {e}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("token") == self._token:
            FileSystems.delete([self._path])

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
