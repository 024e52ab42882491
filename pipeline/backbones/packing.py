"""A backbone that is a directory (a SavedModel, a KerasHub preset) travels as one reproducible tar: the artifact
hashed at launch, staged, and unpacked on the workers."""

from __future__ import annotations

import os
import tempfile

__all__ = ["pack_directory", "unpack_directory"]


def pack_directory(folder: str, keep=None) -> str:
    """A directory as one reproducible tar (sorted members, no owners or times): the artifact that is hashed and
    staged; ``keep``: which files (their paths relative to ``folder``) go in, when not all."""
    import tarfile

    handle, path = tempfile.mkstemp(prefix="featurebeam-backbone-", suffix=".tar")
    os.close(handle)
    with tarfile.open(path, "w") as tar:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                if keep is not None and not keep(os.path.relpath(full, folder)):
                    continue
                info = tar.gettarinfo(full, arcname=os.path.relpath(full, folder))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return path


def unpack_directory(data: bytes) -> str:
    """The staged tar back into a private directory (members that would land outside it are refused)."""
    import io
    import tarfile

    folder = tempfile.mkdtemp(prefix="featurebeam-backbone-")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder
