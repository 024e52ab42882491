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
