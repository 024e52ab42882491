"""What ``featurebeam train`` prints: accuracy per head and split, where the model went, and the layer sweep."""

from __future__ import annotations

__all__ = ["format_training", "format_layer_sweep"]


def format_training(report: dict, output: str) -> str:
    """Each head's accuracy per split, the best head and where the serving model and metrics are."""
    lines = [f"featurebeam: trained {', '.join(report['heads'])} on {len(report['classes'])} classes "
             f"in {report['seconds']:.1f} s ({report['mode']})"]
    for name, head in report["heads"].items():
        parts = [f"{split} {m['accuracy']:.4f} ({m['examples']})" for split, m in head["splits"].items()
                 if m.get("examples")]
        lines.append(f"  {name:7s} accuracy: " + ", ".join(parts) if parts
                     else f"  {name:7s} not scored (no labelled records)")
        unseen = head["splits"].get("test", {}).get("unseen_labels")
        if unseen:
            lines.append(f"  {name:7s} test labels never seen in training (not scored): "
                         + ", ".join(f"{k} x {v}" if isinstance(v, int) else k for k, v in unseen.items()))
    serving = (f"serving model {output}/serving" if report.get("serving")
               else f"head {output}/heads/{report['best_head']}/head.keras")
    lines.append(f"  best head {report['best_head']} (validation accuracy); {serving}")
    lines.append(f"  metrics   {output}/metrics.json")
    return "\n".join(lines)


def format_layer_sweep(sweep: dict, output: str) -> str:
    """One line per layer of a ``--sweep-layers`` run, the best marked."""
    lines = []
    for name in sweep["order"]:
        r = sweep["layers"][name]
        test = f", test {r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
        mark = "  <- best" if name == sweep["best_layer"] else ""
        lines.append(f"  layer {name:22s} {r['dim']:>6d} floats: validation {r['validation_accuracy']:.4f}{test}{mark}")
    lines.append(f"  layer sweep {output}/layer_sweep.json, plot layer_sweep.png")
    return "\n".join(lines)
