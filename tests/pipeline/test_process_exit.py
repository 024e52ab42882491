"""The featurebeam command leaves without tearing its modules down, with its exit code and everything it wrote; a
caller of ``main`` as a function (a test, this one) is never made to leave."""

from __future__ import annotations

import subprocess
import sys

from pipeline import cli, process_exit


def _command(args: str, extra: str = "") -> subprocess.CompletedProcess:
    script = ("import atexit, sys\n"
              "from pipeline.cli import run\n"
              f"{extra}\n"
              f"sys.argv = ['featurebeam', {args}]\n"
              "print('printed, not flushed', end='')\n"
              "sys.exit(run())\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_the_command_leaves_with_its_code_and_its_output_after_every_other_exit_handler():
    usage = _command("'--help'", extra="atexit.register(lambda: print(' (a library handler ran)'))")
    assert usage.returncode == 0 and usage.stdout == "printed, not flushed (a library handler ran)\n"
    assert usage.stderr.startswith("usage: featurebeam {extract,")
    unknown = _command("'no-such-command'")
    assert unknown.returncode == 2 and unknown.stdout == "printed, not flushed"


def test_main_as_a_function_records_no_exit():
    assert cli.main(["--help"]) == 0
    assert process_exit._codes == []  # this process (pytest) ends the usual way
