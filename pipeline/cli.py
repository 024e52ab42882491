"""``featurebeam``: the command line, a dispatcher. Each command's flags and run live beside its code
(``pipeline/extract/command.py``, ``pipeline/train/command.py``, ``pipeline/finetune/command.py``,
``pipeline/report/command.py``, ``pipeline/tools/commands.py``) and are imported only when that command runs.

    featurebeam extract --input DIR_OR_GLOB --output OUTDIR [--backbone NAME] [--batch-size N] [Beam flags]
    featurebeam train --features DIR --output MODELDIR [--head linear|mlp ...] [--test-features DIR]
    featurebeam finetune --input TRAIN --output MODELDIR [--test-input TEST] [--unfreeze K] [--epochs N]
    featurebeam predict --model MODELDIR --input DIR_OR_GLOB --output OUTDIR [Beam flags]
    featurebeam inspect OUTDIR [--check]
    featurebeam export OUTDIR --to parquet|npy --output DIR [--feature-dtype float16] [Beam flags]
    featurebeam report OUTDIR [--model MODELDIR]
    featurebeam bench [--backbone NAME] [--images DIR] [--batch-size N] [--json]
    featurebeam layers [--backbone NAME] [--pooling avg|max|none]
    featurebeam demo [--workdir DIR] [Beam flags]

Every flag that is not featurebeam's own is handed to Apache Beam (``--runner``, ``--direct_num_workers``,
Dataflow's flags ...); a flag that neither knows is an error, not silently dropped.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from pipeline import process_exit  # first: its exit handler runs after every other one
from pipeline.errors import ConfigError, UsageError
from pipeline.logs import quiet_beam

__all__ = ["main", "run", "COMMANDS"]

# name: (module, function, what it does)
COMMANDS = {
    "extract": ("pipeline.extract.command", "cmd_extract",
                "extract backbone features of images into sharded TFRecords + manifest.json"),
    "train": ("pipeline.train.command", "cmd_train",
              "train classifier heads on extracted features; export a serving model"),
    "finetune": ("pipeline.finetune.command", "cmd_finetune",
                 "fine-tune the top blocks of the backbone from a linear probe; export a serving model"),
    "predict": ("pipeline.tools.commands", "cmd_predict", "classify raw images with a trained model directory"),
    "inspect": ("pipeline.tools.commands", "cmd_inspect",
                "summarise a feature set; --check verifies it against its manifest"),
    "export": ("pipeline.tools.commands", "cmd_export",
               "convert a feature set to Parquet, or to .npy matrices + keys.parquet"),
    "report": ("pipeline.report.command", "cmd_report",
               "one self-contained HTML page: thumbnails per class, neighbours, mistakes, metrics"),
    "bench": ("pipeline.tools.commands", "cmd_bench",
              "images/s of the backbone alone and of the whole pipeline, on this machine"),
    "layers": ("pipeline.tools.commands", "cmd_layers",
               "a backbone's layers to extract from, with shapes and bytes per record"),
    "demo": ("pipeline.tools.commands", "cmd_demo",
             "extract features of scikit-learn's digits and train a linear head on them"),
}


def usage() -> str:
    lines = [f"  {name:<8} {about}" for name, (_, _, about) in COMMANDS.items()]
    return (f"usage: featurebeam {{{','.join(COMMANDS)}}} ...\n\n" + "\n".join(lines) +
            "\n\nRun 'featurebeam COMMAND --help' for a command's options.")


def run() -> int:
    """The ``featurebeam`` command: ``main`` on this process's arguments; the process then leaves without tearing
    every module down (``pipeline.process_exit``)."""
    code = main()
    process_exit.leave_with(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported, here or in workers
    from pipeline.backbones.spec import BackboneUnavailableError, UnknownBackboneError
    from pipeline.train.feature_sets import FeatureSetError
    from transforms.worker.cpu import use_onednn
    from transforms.worker.storage import ready_storage

    use_onednn("auto")  # oneDNN's kernels where TensorFlow would leave them off (extract --onednn overrides)

    module, function, _ = COMMANDS[command]
    try:
        with quiet_beam(not os.environ.get("FEATUREBEAM_DEBUG")):
            ready_storage()  # object storage as the workers will see it (GCS emulator, S3 flags)
            return getattr(importlib.import_module(module), function)(rest)
    except (UsageError, ConfigError, UnknownBackboneError, BackboneUnavailableError, FeatureSetError) as e:
        print(f"featurebeam {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"featurebeam {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failed job: one clear line; the traceback only on request
        if os.environ.get("FEATUREBEAM_DEBUG"):
            raise
        message = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        print(f"featurebeam {command}: failed: {type(e).__name__}: {message[:800]} "
              "(set FEATUREBEAM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
