"""Staging: the backbone's artifacts copied to where remote workers read them, under their hash."""

from __future__ import annotations

import dataclasses
import os

from pipeline.backbones.spec import BackboneSpec

__all__ = ["stage_backbone"]


def stage_backbone(spec: BackboneSpec, location: str) -> BackboneSpec:
    """Copy the weights artifact to ``location`` (e.g. a gs:// staging path), in a folder named by its hash and
    under its own file name, so that remote workers read exactly what was hashed at launch (and the manifest
    names the same file as a local run's); return the spec pointing there."""
    from apache_beam.io.filesystems import FileSystems

    def stage(path: str, sha256: str) -> str:
        target = FileSystems.join(location, "featurebeam-weights", sha256[:16], os.path.basename(path))
        if not FileSystems.exists(target):
            with FileSystems.open(path, compression_type="uncompressed") as src, \
                    FileSystems.create(target, compression_type="uncompressed") as dst:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
        return target

    assets = {name: (stage(path, sha), sha) for name, (path, sha) in spec.assets.items()}
    return dataclasses.replace(spec, weights_path=stage(spec.weights_path, spec.weights_sha256), assets=assets)
