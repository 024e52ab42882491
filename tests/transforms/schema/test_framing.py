"""TFRecord framing against TensorFlow's own writer and reader, and what damage each kind of error means."""

import io

import pytest

from transforms.schema.framing import FramingError, TFRecordError, frame, iter_frames

RECORDS = [b"", b"x", b"featurebeam" * 1000, bytes(range(256))]


def test_frames_equal_tensorflows_writer(tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in RECORDS:
            writer.write(record)
    with open(path, "rb") as f:
        assert f.read() == b"".join(frame(r) for r in RECORDS)


def test_tensorflow_reads_what_iter_frames_reads(tmp_path):
    import tensorflow as tf

    path = tmp_path / "ours.tfrecord"
    path.write_bytes(b"".join(frame(r) for r in RECORDS))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == RECORDS
    with open(path, "rb") as f:
        assert list(iter_frames(f)) == RECORDS


@pytest.mark.parametrize("damage, error", [
    (lambda data: data[:-3], TFRecordError),                                  # truncated data
    (lambda data: data[:-20] + b"\0" + data[-19:], TFRecordError),            # a flipped data byte
    (lambda data: data + b"\1\2\3", FramingError),                            # a truncated header
    (lambda data: data[:len(frame(RECORDS[0]))] + b"\xff" * 12, FramingError),  # a corrupt header
], ids=["truncated-data", "corrupt-data", "truncated-header", "corrupt-header"])
def test_damage_is_an_error_never_a_silent_end(damage, error):
    data = damage(b"".join(frame(r) for r in RECORDS))
    with pytest.raises(error):
        list(iter_frames(io.BytesIO(data)))
