"""``hub:PRESET``: KerasHub presets as backbones (``keras-hub``, the ``featurebeam[hub]`` extra).

- ``presets``: a preset handle (a name, ``hf://``, ``kaggle://``, a local or remote preset directory) -> one local
  preset directory, resolved once at launch;
- ``image_towers``: what each supported architecture offers to embed an image (its layers worth extracting), and
  its image converter as featurebeam's preprocessing;
- ``text_towers``: a CLIP preset's tokenizer for the workers and its text tower over token ids;
- ``preset_backbones``: the ``BackboneSpec`` of either tower (``resolve``: the directory packed into one hashed
  tar) and the frozen model a worker builds from the staged, hash-checked tar (``build``).
"""
