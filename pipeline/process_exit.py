"""How the ``featurebeam`` command's process ends: once every exit handler has run, it leaves without the
interpreter's teardown of every module it imported (Apache Beam, gRPC, and TensorFlow where a command loaded it:
most of a second at the end of every command, on a 2-core AMD EPYC).

Importing this module registers the handler, before anything heavy is imported, so that it runs after every other
one (they run last registered, first run): by then the command's threads are joined and every handler the
libraries registered has run. It acts only once ``leave_with`` has recorded the command's exit code, which
``pipeline.cli.run`` does and a caller of ``main`` as a function (a test) never does.
"""

from __future__ import annotations

import atexit

from transforms.worker.leave import leave_without_teardown

__all__ = ["leave_with"]

_codes: list[int] = []


def leave_with(code: int) -> None:
    """The command is done, with this exit code: the process may leave without the teardown."""
    _codes.append(int(code or 0))


def _leave() -> None:
    if _codes:
        leave_without_teardown(_codes[-1])


atexit.register(_leave)
