"""Read a legacy (pre-1.6) PyTorch checkpoint into numpy arrays, without torch and without trusting it.

A ``.pth`` file of that format is a run of pickles (magic number, protocol version, system info, the state
dict, the storage keys) followed by the raw storages. Unpickling it with the standard unpickler would run
whatever the file names; this reader resolves only the handful of globals a tensor state dict needs and
refuses every other one, so a crafted file raises ``UnsafeWeightsError`` instead of running code.

Every tensor is also checked against its storage before any array is made: a non-negative storage offset,
as many strides as sizes, no negative size or stride, and (unless the tensor is empty) a last element that
lies inside the storage. A tensor that would read outside its storage raises ``UnsafeWeightsError`` naming
it, so a crafted file cannot make the reader hand back process memory. Each storage's byte length must match
its declared element count, or the file is a ``WeightsFormatError``. Every returned array is a C-contiguous,
writeable copy that owns its memory.
"""

from __future__ import annotations

import collections
import io
import operator
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

__all__ = ["UnsafeWeightsError", "WeightsFormatError", "read_legacy_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeWeightsError(pickle.UnpicklingError):
    """The checkpoint asks for a Python object that a tensor state dict never needs."""


class WeightsFormatError(ValueError):
    """The file is not a legacy PyTorch checkpoint, or it is damaged."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple

    def to_numpy(self, name: object = "?") -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsFormatError(f"tensor {name!r} refers to a storage that the file does not contain")
        problem = self._out_of_bounds(data.size)
        if problem:
            raise UnsafeWeightsError(
                f"refusing to load weights: tensor {name!r} (sizes {self.shape}, strides {self.stride}, "
                f"storage offset {self.offset}, storage of {data.size} elements) {problem}"
            )
        if 0 in self.shape:
            return np.zeros(self.shape, dtype=data.dtype)
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.shape,
            strides=tuple(st * data.itemsize if sz > 1 else 0 for sz, st in zip(self.shape, self.stride, strict=True)),
            writeable=False,
        )
        return view.copy(order="C")

    def _out_of_bounds(self, numel: int) -> str | None:
        """Why this tensor would read outside a storage of ``numel`` elements, or None if it would not."""
        if len(self.shape) != len(self.stride):
            return f"has {len(self.shape)} sizes but {len(self.stride)} strides"
        if self.offset < 0:
            return "starts before its storage"
        if any(sz < 0 for sz in self.shape):
            return "has a negative size"
        if any(st < 0 for st in self.stride):
            return "has a negative stride"
        if 0 in self.shape:
            return None
        last = self.offset + sum((sz - 1) * st for sz, st in zip(self.shape, self.stride, strict=True))
        if last >= numel:
            return f"reaches element {last}, past the end of its storage"
        return None


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(storage, _Storage):
        raise WeightsFormatError("a tensor is built from something that is not a storage")
    return _TensorRef(storage, operator.index(storage_offset), _ints(size), _ints(stride))


def _ints(values) -> tuple[int, ...]:
    return tuple(operator.index(v) for v in values)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"refusing to load weights: the file asks for the Python object {module}.{name}, "
                "which a tensor checkpoint never needs (it could run code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsFormatError(f"unknown persistent id in checkpoint: {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsFormatError("a storage in the checkpoint has an unknown type")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsFormatError("storage views are not supported in legacy checkpoints")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(storage_type.dtype, int(numel))
        return storage


def _load_one(f: BinaryIO, storages: dict[str, _Storage]):
    try:
        return _RestrictedUnpickler(f, storages).load()
    except (UnsafeWeightsError, WeightsFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise WeightsFormatError(f"not a readable legacy PyTorch checkpoint ({type(e).__name__}: {e})") from None


def read_legacy_state_dict(source: str | bytes | BinaryIO) -> dict[str, np.ndarray]:
    """Return the checkpoint's state dict as ``{name: numpy array}``; refuse anything but tensors."""
    if isinstance(source, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(source)
    elif isinstance(source, str):
        with open(source, "rb") as fh:
            return read_legacy_state_dict(fh.read())
    else:
        f = source

    if f.read(2) == b"PK":
        raise WeightsFormatError("this is a zip-format (PyTorch >= 1.6) checkpoint; only the legacy format is read")
    f.seek(0)
    storages: dict[str, _Storage] = {}
    if _load_one(f, storages) != _MAGIC_NUMBER:
        raise WeightsFormatError("not a PyTorch checkpoint (wrong magic number)")
    if _load_one(f, storages) != _PROTOCOL_VERSION:
        raise WeightsFormatError("unsupported PyTorch checkpoint protocol version")
    sys_info = _load_one(f, storages)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise WeightsFormatError("big-endian checkpoints are not supported")
    state = _load_one(f, storages)
    keys = _load_one(f, storages)
    if not isinstance(keys, list):
        raise WeightsFormatError("checkpoint storage table is damaged")

    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise WeightsFormatError(f"checkpoint lists storage {key!r} that no tensor uses")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsFormatError("checkpoint is truncated (storage header missing)")
        (numel,) = struct.unpack("<q", header)
        if numel < 0:
            raise WeightsFormatError(f"checkpoint storage {key!r} has a negative size")
        nbytes = numel * np.dtype(storage.dtype).itemsize
        raw = f.read(nbytes)
        if numel != storage.numel or len(raw) != nbytes:
            raise WeightsFormatError("checkpoint is truncated or its storage sizes disagree")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)

    if not isinstance(state, dict):
        raise WeightsFormatError("checkpoint does not hold a state dict")
    arrays = {}
    for name, value in state.items():
        if isinstance(value, _TensorRef):
            arrays[name] = value.to_numpy(name)
    return arrays
