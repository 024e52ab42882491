"""``featurebeam layers``: a backbone's layers worth extracting, with shapes and bytes per record."""

from __future__ import annotations

from transforms.embed.pooling import pooled_dim

__all__ = ["format_layers"]


def format_layers(spec, pooling: str, show_all: bool = False) -> str:
    """One line per layer (the candidates, or every layer): output shape, pooled dim, bytes per record."""
    lines = [f"featurebeam layers: {spec.name} (default --layer {spec.default_layer}), pooling {pooling}"]
    width = max(14, *(len(name) for name in spec.layer_shapes))
    lines.append(f"  {'layer':{width}s} {'output shape':>16s} {'dim':>9s} {'bytes/record':>13s}")
    shown = spec.layer_shapes if show_all or not spec.candidates else {
        name: spec.layer_shapes[name] for name in spec.candidates}
    for name, shape in shown.items():
        dim = pooled_dim(shape, pooling if len(shape) > 1 else "none")
        mark = "  (default)" if name == spec.default_layer else ""
        lines.append(f"  {name:{width}s} {'x'.join(map(str, shape)):>16s} {dim:>9,d} {4 * dim:>13,d}{mark}")
    if len(shown) < len(spec.layer_shapes):
        lines.append(f"  ({len(spec.layer_shapes) - len(shown)} more layers with --all; --layer takes any of them)")
    return "\n".join(lines)
