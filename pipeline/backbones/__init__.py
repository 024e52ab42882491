"""Backbones: which frozen networks featurebeam can run, resolved once at launch to one hashed artifact.

- ``spec``: ``BackboneSpec``, the picklable description that travels to the workers (``spec.load(layers)``);
- ``registry``: ``resolve_backbone(name)`` for every name ``--backbone`` takes;
- ``ports/``: the embedded ports of published weights (MobileNetV2, EfficientNet-Lite0, MiniLM), BatchNorm folded;
- ``user_models/``: the user's own (``keras:NAME``, model files, SavedModels);
- ``hub/``: KerasHub presets (``hub:PRESET``: CLIP, DINOv2, ViT, BERT), either tower of CLIP;
- ``packing``: a directory backbone (a SavedModel, a preset) as one reproducible tar;
- ``uint8_input``: the uint8-in, normalise-in-the-graph wrapper every image backbone shares;
- ``staging``: copying the artifacts where remote workers read them.
"""
