"""--precision bfloat16: the forward pass in bfloat16 on CPUs that have it, vectors stored as float32."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.extract.runtime import cpu_has_bfloat16
from transforms.decode.images import decode_image
from transforms.embed.backbone import BackboneHandler, load_in_precision
from transforms.embed.settings import EmbedSettings

needs_bfloat16 = pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU computes no bfloat16")


def _features(spec, outputs, photos, precision):
    handler = BackboneHandler(spec, EmbedSettings(outputs, batch_size=len(photos), precision=precision))
    results = handler.run_inference([decode_image(p, spec.preprocessing) for p in photos], handler.load_model())
    return {o.name: np.stack([np.asarray(r.inference[o.name]) for r in results]) for o in outputs}


@needs_bfloat16
@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_bfloat16_features_are_float32_with_a_cosine_of_at_least_0999(name, sample_photos):
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.extract.launch import resolve_outputs

    spec = resolve_backbone(name)
    layers = [spec.default_layer, *[c for c in spec.candidates if c != spec.default_layer][:1]]
    outputs = resolve_outputs(spec, layers, "avg")
    photos = list(sample_photos.values())
    full = _features(spec, outputs, photos, "float32")
    half = _features(spec, outputs, photos, "bfloat16")
    for out in outputs:
        a, b = full[out.name], half[out.name]
        assert b.dtype == np.float32 and b.shape == a.shape == (len(photos), out.dim)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() >= 0.999, (out.name, cosine)
        assert not np.array_equal(a, b)  # it did compute in bfloat16


def test_a_bfloat16_load_keeps_the_stem_in_float32_and_puts_the_global_policy_back():
    import keras

    from pipeline.backbones.registry import resolve_backbone

    before = keras.config.dtype_policy().name
    model = load_in_precision(resolve_backbone("mobilenet_v2"), ["features.18"], "bfloat16")
    assert keras.config.dtype_policy().name == before == "float32"
    layers = []
    stack = [model]
    while stack:  # every layer, nested models walked into, in order
        layer = stack.pop(0)
        if hasattr(layer, "layers"):
            stack[:0] = layer.layers
        else:
            layers.append(layer)
    first = next(i for i, layer in enumerate(layers) if layer.weights)
    policies = {layer.name: layer.dtype_policy.name for layer in layers}
    assert {policies[layer.name] for layer in layers[:first + 1]} == {"float32"}  # normalisation, stem conv
    assert policies["features.18"] == "float32"  # the extracted layer itself
    assert {policies[layer.name] for layer in layers[first + 1:] if layer.name != "features.18"} == {"mixed_bfloat16"}


@pytest.mark.parametrize("flags, has, message", [
    (["--precision", "bfloat16"], False,
     "--precision bfloat16 needs a CPU with AVX-512 BF16 or AMX (or a GPU); this one has neither: drop the flag "
     "to run in float32"),
    (["--precision", "bfloat16", "--mixed-precision"], True,
     "--mixed-precision (float16) contradicts --precision bfloat16; choose one"),
], ids=["no-bfloat16-cpu", "contradiction"])
def test_bfloat16_launch_errors_are_one_line(tmp_path, capsys, monkeypatch, flags, has, message):
    from PIL import Image

    import pipeline.extract.launch as launch

    monkeypatch.setattr(launch, "cpu_has_bfloat16", lambda: has)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    assert main(["extract", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"featurebeam extract: error: {message}"


@pytest.mark.parametrize("flags, expected", [
    ("fpu vme avx512f avx512_bf16 amx_tile", True), ("fpu amx_bf16", True), ("fpu avx512f avx512_vnni", False),
], ids=["avx512-bf16", "amx", "neither"])
def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_bfloat16(str(cpuinfo)) is expected
    assert cpu_has_bfloat16(str(tmp_path / "missing")) is False
