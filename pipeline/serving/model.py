"""The serving model: frozen backbone + preprocessing + head, as one SavedModel.

Endpoints of an image model:
- ``serve`` (also ``serving_default``): ``image_bytes`` (N,) encoded images -> ``probabilities`` (N, C),
  ``label`` (N,) predicted class name, ``class_names`` (N, C).
- ``classify_images``: ``images`` (N, crop, crop, 3) uint8, already decoded and cropped the project's way
  (``transforms.decode.images.decode_image``) -> the same outputs; what ``featurebeam predict`` uses, so that
  undecodable files are recorded failures rather than a failed batch.

Endpoints of a text model:
- ``serve`` (also ``serving_default``): ``texts`` (N,) raw strings -> the same outputs, tokenised in the graph
  by the backbone's own tokenizer.json (``pipeline.serving.graph_tokenizer``: the ids extraction gives);
- ``classify_token_ids``: ``ids``, ``mask`` (N, T) int32, padded on the right as extraction pads them
  (``transforms.embed.model_inputs.pad_tokens``) -> the same outputs.

Endpoints of an audio model (``pipeline.serving.graph_audio``):
- ``serve`` (also ``serving_default``): ``samples`` (T,) float32, one mono recording at the backbone's rate (16 kHz
  for musicnn) -> the same outputs (one row): cut into 3-s patches in the graph as extraction cuts them, each patch
  embedded, the recording's vector their mean;
- ``classify_patches``: ``patches`` (P, patch samples) float32 as the decoder cuts them
  (``transforms.decode.audio``), ``recording`` (P,) int32 the row each patch belongs to, ``recordings`` () int32 how
  many rows -> the same outputs, a row per recording;
- ``patch_vectors``: ``patches`` -> (P, dim) the head's input of each patch, and ``classify_vectors``: ``vectors``
  (N, dim), recordings' mean patch vectors -> the same outputs; what ``featurebeam predict`` uses, a recording's
  windows at a time, so a long one never goes through the model whole.

Either way the vector is the one extraction writes for the output (``transforms.embed.model_inputs``: ``forward`` then
``vector``), so the head sees what it was trained on."""

from __future__ import annotations

from collections.abc import Sequence

from transforms.schema.fields import OutputSpec

__all__ = ["export_serving_model", "unservable"]


def unservable(backbone_spec) -> str | None:
    """Why no serving model can take this backbone's raw inputs, or None: a text backbone whose tokenizer the
    graph tokenizer cannot run (a byte-level BPE, as CLIP's)."""
    if backbone_spec.modality != "text":
        return None
    from pipeline.serving.graph_tokenizer import unsupported

    return unsupported(backbone_spec.read_asset("tokenizer").decode("utf-8"))


def export_serving_model(path: str, backbone_spec, output: OutputSpec, head, classes: Sequence[str],
                         backbone=None) -> None:
    """``backbone``: the model to serve (``{layer: activation}`` of the backbone's inputs) when it is not the spec's
    own frozen one (``featurebeam finetune``'s fine-tuned backbone); ``backbone_spec`` still gives preprocessing."""
    import keras
    import tensorflow as tf

    from transforms.embed.model_inputs import inputs_for

    backbone = backbone if backbone is not None else backbone_spec.load([output.layer])
    inputs = inputs_for(backbone_spec)
    names = list(classes)

    def vectors(*args):
        return inputs.vector(inputs.forward(backbone, args)[output.layer], output.pooling, args)

    def classify_vectors(vectors):
        probabilities = head(vectors, training=False)
        class_names = tf.constant(names)
        n = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=1)),
            "class_names": tf.tile(class_names[None, :], [n, 1]),
        }

    if backbone_spec.modality == "audio":
        from pipeline.serving.graph_audio import audio_endpoints

        resources, endpoints = audio_endpoints(backbone_spec.preprocessing, vectors, classify_vectors, output.dim)
    else:
        build_endpoints = _text_endpoints if backbone_spec.modality == "text" else _image_endpoints
        resources, endpoints = build_endpoints(backbone_spec, lambda *args: classify_vectors(vectors(*args)))
    archive = keras.export.ExportArchive()
    for resource in (backbone, head, *resources):
        archive.track(resource)
    for name, fn, signature in endpoints:
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)


def _image_endpoints(backbone_spec, classify) -> tuple[list, list]:
    """(resources to track, endpoints as (name, function, input signature)) of an image model."""
    import tensorflow as tf

    from pipeline.serving.graph_images import decode_and_crop

    prep = backbone_spec.preprocessing
    size = prep.crop

    def serve(image_bytes):
        images = tf.map_fn(lambda b: decode_and_crop(b, prep), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return classify(images)

    def classify_images(images):
        return classify(images)

    return [], [("serve", serve, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
                ("classify_images", classify_images,
                 [tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])]


def _text_endpoints(backbone_spec, classify) -> tuple[list, list]:
    """The same for a text model: its graph tokenizer is a resource (lookup tables), saved with the model."""
    import tensorflow as tf

    from pipeline.serving.graph_tokenizer import graph_tokenizer

    tokenizer = graph_tokenizer(backbone_spec.read_asset("tokenizer").decode("utf-8"),
                                backbone_spec.preprocessing.max_length)

    def serve(texts):
        return classify(*tokenizer.tokenize(texts))

    def classify_token_ids(ids, mask):
        return classify(ids, mask)

    return [tokenizer], [("serve", serve, [tf.TensorSpec([None], tf.string, name="texts")]),
                         ("classify_token_ids", classify_token_ids,
                          [tf.TensorSpec([None, None], tf.int32, name="ids"),
                           tf.TensorSpec([None, None], tf.int32, name="mask")])]
