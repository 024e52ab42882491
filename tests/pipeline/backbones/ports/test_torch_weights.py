"""The restricted reader of legacy PyTorch checkpoints: reads real weights, refuses anything that runs code."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest

from pipeline.backbones.ports.torch_weights import UnsafeWeightsError, WeightsFormatError, read_legacy_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_file(payload: bytes, storages: bytes = b"", keys=()) -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, 1001, {"little_endian": True}))
    return head + payload + pickle.dumps(list(keys), protocol=2) + storages


def _pickle_int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _pickle_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _pickle_tuple(items) -> bytes:
    return b"(" + b"".join(_pickle_int(i) for i in items) + b"t"


def _tensor_file(storage: np.ndarray, tensors: dict[str, tuple[int, tuple, tuple]]) -> bytes:
    """A legacy checkpoint whose tensors ``{name: (offset, sizes, strides)}`` all view one float32 storage."""
    storage_pid = (
        b"(" + _pickle_str("storage") + b"ctorch\nFloatStorage\n" + _pickle_str("0") + _pickle_str("cpu")
        + _pickle_int(storage.size) + b"NtQ"
    )
    items = b"".join(
        _pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_pid + _pickle_int(offset)
        + _pickle_tuple(sizes) + _pickle_tuple(strides) + b"\x89ccollections\nOrderedDict\n)RtRs"
        for name, (offset, sizes, strides) in tensors.items()
    )
    payload = b"\x80\x02ccollections\nOrderedDict\n)R" + items + b"."
    raw = struct.pack("<q", storage.size) + storage.astype(np.float32).tobytes()
    return _legacy_file(payload, raw, keys=["0"])


def test_reads_the_real_mobilenet_v2_checkpoint(mobilenet_spec):
    weights = read_legacy_state_dict(mobilenet_spec.weights_path)
    assert weights["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert weights["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert weights["classifier.1.weight"].shape == (1000, 1280)
    assert weights["features.0.1.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(w).all() for w in weights.values())
    assert len([k for k in weights if k.endswith("running_var")]) == 52  # every BatchNorm of MobileNetV2


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "evil.pth"
    crafted.write_bytes(_legacy_file(pickle.dumps({"features.0.0.weight": Payload()}, protocol=2)))
    with pytest.raises(UnsafeWeightsError, match=r"refusing to load weights: .*(posix|os)\.system"):
        read_legacy_state_dict(str(crafted))
    assert not marker.exists()


def test_refuses_code_hidden_in_the_header_pickles():
    evil_magic = pickle.dumps(_RunsCode(), protocol=2)
    with pytest.raises(UnsafeWeightsError):
        read_legacy_state_dict(evil_magic)


def test_reads_a_hand_made_tensor():
    # The layout torch writes: the state dict refers to storage "0" by persistent id; its bytes follow.
    values = np.arange(6, dtype=np.float32)
    payload = (
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02"
        b"ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05"
        b"X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06Ntq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n"
        b"\x89h\x00)Rq\x0btq\x0cRq\rs."
    )
    data = _legacy_file(payload, struct.pack("<q", 6) + values.tobytes(), keys=["0"])
    weights = read_legacy_state_dict(data)
    np.testing.assert_array_equal(weights["w"], values.reshape(2, 3))


@pytest.mark.parametrize("data, message", [
    (b"", "not a readable legacy PyTorch checkpoint"),
    (b"\x00\x01random bytes that are no pickle", "not a readable legacy PyTorch checkpoint"),
    (pickle.dumps(12345, protocol=2), "wrong magic number"),
    (b"PK\x03\x04zip", "zip-format"),
], ids=["empty", "random", "wrong-magic", "zip-format"])
def test_rejects_what_is_not_a_legacy_checkpoint(data, message):
    with pytest.raises(WeightsFormatError, match=message):
        read_legacy_state_dict(data)


def test_rejects_a_truncated_checkpoint(mobilenet_spec):
    with open(mobilenet_spec.weights_path, "rb") as f:
        data = f.read()
    with pytest.raises(WeightsFormatError, match="truncated"):
        read_legacy_state_dict(io.BytesIO(data[: len(data) // 2]))


@pytest.mark.parametrize("offset, sizes, strides, reason", [
    (0, (2, 4), (4, 1), "reaches element 7, past the end of its storage"),
    (0, (1000, 1000), (1000, 1), "reaches element 999999, past the end of its storage"),
    (6, (1,), (1,), "reaches element 6, past the end of its storage"),
    (40, (2,), (1,), "reaches element 41, past the end of its storage"),
    (-1, (2,), (1,), "starts before its storage"),
    (5, (3,), (-1,), "has a negative stride"),
    (0, (-2, 3), (3, 1), "has a negative size"),
    (0, (2, 3), (3,), "has 2 sizes but 1 strides"),
], ids=["shape-too-big", "huge-shape", "offset-at-end", "offset-past-end", "negative-offset", "negative-stride",
        "negative-size", "missing-stride"])
def test_refuses_a_tensor_that_reads_outside_its_storage(offset, sizes, strides, reason):
    data = _tensor_file(np.arange(6, dtype=np.float32), {"ok": (0, (6,), (1,)), "features.0.0.weight": (
        offset, sizes, strides)})
    with pytest.raises(UnsafeWeightsError) as caught:
        read_legacy_state_dict(data)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"refusing to load weights: tensor 'features.0.0.weight' (sizes {sizes}, strides {strides}, "
        f"storage offset {offset}, storage of 6 elements) {reason}"
    )


def test_reads_legal_strided_views_of_a_shared_storage():
    storage = np.arange(12, dtype=np.float32) * 1.5
    weights = read_legacy_state_dict(_tensor_file(storage, {
        "transposed": (0, (4, 3), (1, 4)),
        "tail": (7, (5,), (1,)),
        "every_other_row": (1, (2, 2), (6, 2)),
        "broadcast": (11, (2, 3), (0, 0)),
        "scalar": (3, (), ()),
        "empty": (12, (0, 5), (5, 1)),
        "unit_dim_any_stride": (2, (1, 2), (1000, 1)),
    }))
    expected = {
        "transposed": storage[:12].reshape(3, 4).T,
        "tail": storage[7:12],
        "every_other_row": np.array([[storage[1], storage[3]], [storage[7], storage[9]]]),
        "broadcast": np.full((2, 3), storage[11]),
        "scalar": np.array(storage[3]),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "unit_dim_any_stride": storage[2:4].reshape(1, 2),
    }
    assert weights.keys() == expected.keys()
    for name, want in expected.items():
        got = weights[name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.owndata and got.flags.writeable and got.flags.c_contiguous, name


def test_returned_arrays_own_their_memory():
    data = _tensor_file(np.arange(6, dtype=np.float32), {"a": (0, (2, 3), (3, 1)), "b": (0, (2, 3), (3, 1))})
    weights = read_legacy_state_dict(data)
    assert weights["a"].flags.owndata and weights["a"].base is None
    weights["a"][0, 0] = 99.0
    np.testing.assert_array_equal(weights["b"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_rejects_a_storage_shorter_than_declared():
    data = _tensor_file(np.arange(6, dtype=np.float32), {"w": (0, (6,), (1,))})
    with pytest.raises(WeightsFormatError, match="truncated"):
        read_legacy_state_dict(data[:-4])
