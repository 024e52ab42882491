"""``hub:PRESET``: KerasHub presets as backbones (``keras-hub``, the ``featurebeam[hub]`` extra).

- ``presets``: a preset handle (a name, ``hf://``, ``kaggle://``, a local or remote preset directory) -> one local
  preset directory, its files hashed, resolved once at launch;
- ``image_towers``: what each supported architecture offers to embed an image (its layers worth extracting);
- ``image_presets``: the ``BackboneSpec`` of an image preset (``resolve``) and the frozen model a worker builds
  from the staged, hash-checked files (``build``).
"""
