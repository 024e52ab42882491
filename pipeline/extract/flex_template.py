"""The Dataflow Flex Template's parameters as ``featurebeam extract`` flags (deploy/flex_template/metadata.json).

Dataflow's template launcher runs deploy/flex_template/main.py with ``--NAME=VALUE`` for
each template parameter the user set and for each pipeline option. Parameter names are featurebeam's flags
with underscores (``records_per_shard`` for ``--records-per-shard``); on/off flags take ``true`` or ``false``.
Everything else passes through to ``featurebeam extract`` as it came.

The launcher has the job staged through ``--template_location`` and starts it at once, so ``launcher_argv`` adds
``--template-launch``: the output folder is prepared at launch, as for a job submitted from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["extract_args", "launcher_argv"]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _featurebeam_flags() -> dict[str, tuple[str, bool]]:
    """dest -> (the flag, whether it is an on/off flag), for every featurebeam extract flag."""
    import argparse

    from pipeline.extract.options import ExtractOptions

    parser = argparse.ArgumentParser(add_help=False)
    ExtractOptions._add_argparse_args(parser)
    return {action.dest: (action.option_strings[0], isinstance(action, argparse._StoreTrueAction))
            for action in parser._actions if action.option_strings}


def extract_args(argv: Sequence[str]) -> list[str]:
    """The launcher's ``--name=value`` arguments as ``featurebeam extract`` flags."""
    flags = _featurebeam_flags()
    args = []
    for arg in argv:
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", False, "")
        if name not in flags:
            args.append(arg)
            continue
        flag, on_off = flags[name]
        if not on_off:
            args.append(f"{flag}={value}" if has_value else flag)
        elif not has_value or value.strip().lower() in _TRUE:
            args.append(flag)
        elif value.strip().lower() not in _FALSE:
            raise ValueError(f"template parameter {name} takes true or false, got {value!r}")
    return args


def launcher_argv(argv: Sequence[str]) -> list[str]:
    """The whole ``featurebeam`` command line the template launcher stands for."""
    return ["extract", *extract_args(argv), "--template-launch"]
