"""The serving model: frozen backbone + preprocessing + head, as one SavedModel.

Endpoints:
- ``serve`` (also ``serving_default``): ``image_bytes`` (N,) encoded images -> ``probabilities`` (N, C),
  ``label`` (N,) predicted class name, ``class_names`` (N, C).
- ``classify_images``: ``images`` (N, crop, crop, 3) uint8, already decoded and cropped the project's way
  (``transforms.decode.images.decode_image``) -> the same outputs; what ``featurebeam predict`` uses, so that
  undecodable files are recorded failures rather than a failed batch."""

from __future__ import annotations

from collections.abc import Sequence

from transforms.schema import OutputSpec

__all__ = ["export_serving_model"]



def export_serving_model(path: str, backbone_spec, output: OutputSpec, head, classes: Sequence[str],
                         backbone=None) -> None:
    """``backbone``: the model to serve (uint8 images -> ``{layer: activation}``) when it is not the spec's own
    frozen one (``featurebeam finetune``'s fine-tuned backbone); ``backbone_spec`` still gives preprocessing."""
    import keras
    import tensorflow as tf

    from transforms.decode.tf_images import decode_and_crop
    from transforms.embed.pooling import pool

    backbone = backbone if backbone is not None else backbone_spec.load([output.layer])
    prep = backbone_spec.preprocessing
    size = prep.crop
    names = list(classes)

    def classify(images):
        features = pool(backbone(images, training=False)[output.layer], output.pooling)
        probabilities = head(features, training=False)
        class_names = tf.constant(names)
        n = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=1)),
            "class_names": tf.tile(class_names[None, :], [n, 1]),
        }

    def serve(image_bytes):
        images = tf.map_fn(lambda b: decode_and_crop(b, prep), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return classify(images)

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.track(head)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("classify_images", classify,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    archive.write_out(path, verbose=False)
