"""``ServingModelHandler``: ``ClassifierHandler`` over a serving model anywhere (local, gs://, s3://)."""

from __future__ import annotations

from transforms.embed.classify import ClassifierHandler
from transforms.worker.process import ready_process

__all__ = ["ServingModelHandler"]


class ServingModelHandler(ClassifierHandler):
    """A remote serving model is copied to local disk, once per worker process, since TensorFlow loads SavedModels
    from local paths."""

    def load_model(self):
        ready_process()  # before TensorFlow is imported: its oneDNN choice
        import tensorflow as tf

        from pipeline.folders import local_copy

        with local_copy(self._path) as folder:
            return tf.saved_model.load(folder)
