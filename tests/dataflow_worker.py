"""A stand-in for a Dataflow worker, run as a script in an empty directory.

It runs a pipeline proto that ``DataflowRunner`` staged (``pipeline.pb``, read from gs://) with Beam's
FnApiRunner, importing the job's code only from ``--site``: the directory the staged sdist
(``workflow.tar.gz``) was installed into. The test's Python environment plays the worker image (Beam,
TensorFlow and the other dependencies); an editable install of the project in that environment is switched
off first, so nothing can come from the source tree. It prints where the job's packages were imported from.

    python dataflow_worker.py --site DIR --pipeline gs://BUCKET/.../pipeline.pb
"""

from __future__ import annotations

import argparse
import os
import sys

PACKAGES = ("pipeline", "transforms")


def isolate(site: str) -> None:
    """Import the job's packages from ``site`` only: drop the finders an editable install adds."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
    sys.path[:] = [site] + [p for p in sys.path if p not in ("", os.getcwd()) and not p.startswith("__editable__")]
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]


def run(pipeline_uri: str) -> None:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability import python_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.worker.storage import ready_storage

    ready_storage()  # the staged proto is read from the emulator before any DoFn's setup readies this process

    with FileSystems.open(pipeline_uri) as f:
        proto = beam_runner_api_pb2.Pipeline.FromString(f.read())
    for environment in proto.components.environments.values():  # the job's container image: this process
        environment.urn = python_urns.EMBEDDED_PYTHON
        environment.payload = b""
    FnApiRunner().run_via_runner_api(proto, PipelineOptions([])).wait_until_finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True, help="where the staged sdist was installed")
    parser.add_argument("--pipeline", required=True, help="the staged pipeline.pb")
    args = parser.parse_args()
    isolate(os.path.abspath(args.site))
    run(args.pipeline)
    for name in PACKAGES:
        print(f"{name} from {os.path.dirname(sys.modules[name].__file__)}")


if __name__ == "__main__":
    main()
