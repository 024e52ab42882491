"""TensorFlow's oneDNN kernels against its older Eigen ones, side by side. (Not part of the test run.)

``featurebeam bench`` run alternately with ``--onednn off`` (TensorFlow's Eigen kernels: its own default on CPUs
without AVX-512 VNNI/BF16 or AMX) and ``--onednn on`` (what featurebeam's ``auto`` chooses there), on the same
photos, the one that goes first alternating from round to round. Prints each setting's forward-only limit, the
pipeline's marginal rate and its ratio to the CPU limit (medians over the rounds), and the on/off ratios, with the
CPU they came from:

    python tests/benchmarks/bench_onednn.py [--backbone mobilenet_v2] [--rounds 3] [--count 600] [--isa AVX2]

``--isa AVX2`` caps oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``) in both settings, so that a CPU with AVX-512
runs the kernels an AVX2-only CPU would: oneDNN's own, and the matrix products that TensorFlow's Eigen kernels hand
to oneDNN. Eigen's other code is compiled for AVX and runs alike on both kinds. A stand-in only: the cores, caches
and clocks are still this CPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ("off", "on")


def run_bench(onednn: str, photos: str, backbone: str, isa: str | None) -> dict:
    """One ``featurebeam bench --json`` in a fresh process, oneDNN ``onednn``, its instruction set capped at
    ``isa``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    done = subprocess.run([sys.executable, "-m", "pipeline", "bench", "--backbone", backbone, "--images", photos,
                           f"--onednn={onednn}", "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"featurebeam bench --onednn {onednn} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rounds: list[dict[str, dict]]) -> str:
    """The table: medians per setting, and the medians of each round's on/off ratios."""
    def median(setting, field):
        return statistics.median(r[setting][field] for r in rounds)

    def ratio(field):
        return statistics.median(r["on"][field] / r["off"][field] for r in rounds)

    first = rounds[0]["on"]
    lines = [f"{first['backbone']}, {first['images']} photos, {len(rounds)} rounds; {first['cpu']}, "
             f"{first['cores']} cores",
             f"{'oneDNN':8}{'forward images/s':>18}{'pipeline images/s':>19}{'of the CPU limit':>18}"]
    for setting in SETTINGS:
        states = {r[setting]["onednn"] for r in rounds}
        lines.append(f"{setting + ('' if states == {setting} else ' (ran ' + '/'.join(sorted(states)) + ')'):8}"
                     f"{median(setting, 'limit_images_per_s'):18.1f}{median(setting, 'pipeline_images_per_s'):19.1f}"
                     f"{median(setting, 'ratio_to_cpu_limit'):18.2f}")
    lines.append(f"on/off  {ratio('limit_images_per_s'):17.2f}x{ratio('pipeline_images_per_s'):18.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=600, help="JPEG photos of 500x400 to generate")
    parser.add_argument("--isa", help="cap oneDNN's instruction set in both settings (e.g. AVX2)")
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    from pipeline.tools.bench import make_photos

    with tempfile.TemporaryDirectory(prefix="featurebeam-onednn-") as folder:
        make_photos(folder, args.count)
        rounds = []
        for n in range(args.rounds):
            order = SETTINGS if n % 2 == 0 else SETTINGS[::-1]
            rounds.append({s: run_bench(s, folder, args.backbone, args.isa) for s in order})
            print(f"round {n + 1}: " + ", ".join(
                f"{s} {rounds[-1][s]['limit_images_per_s']:.1f} / {rounds[-1][s]['pipeline_images_per_s']:.1f}"
                for s in order), file=sys.stderr, flush=True)
    print(("oneDNN capped at " + args.isa + "; " if args.isa else "") + summarise(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
