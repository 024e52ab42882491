"""A local run's worker process leaves without tearing TensorFlow down, with everything it printed flushed and the
exit code of a failed harness kept; no other process (the command, a test run) ever does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from transforms.worker import process


def _run(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import atexit, sys
        from transforms.worker.process import exit_without_teardown
        atexit.register(lambda: print("ran before the exit", flush=True))  # LIFO: after the one below
        atexit.register(exit_without_teardown)
        print("written, not flushed", end="")
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_worker_that_finished_leaves_at_once_with_its_output_flushed():
    done = _run("")
    assert done.returncode == 0 and done.stdout == "written, not flushed"  # the handler after it never ran


def test_a_worker_whose_harness_failed_exits_the_usual_way_with_its_code():
    failed = _run("raise RuntimeError('the harness failed')")
    assert failed.returncode == 1 and "the harness failed" in failed.stderr
    assert failed.stdout == "written, not flushedran before the exit\n"


def test_only_a_beam_sdk_worker_process_leaves_that_way():
    assert not process._is_sdk_worker()  # this test process, as the featurebeam command would be
    check = (f"import sys, types; sys.modules['__main__'].__spec__ = types.SimpleNamespace(name="
             f"{process.SDK_WORKER_MAIN!r}); from transforms.worker.process import _is_sdk_worker; "
             "print(_is_sdk_worker())")
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "True"
