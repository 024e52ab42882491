"""The suite's two tiers, and where the tests' local pipelines run.

- ``pytest`` (the README's test command, and CI) runs every test.
- ``pytest --fast`` (``make test-fast``) runs the unit tests. A test that starts a Beam pipeline, a subprocess (a
  command, a worker process, an object-storage emulator) or a real backbone is stopped at that point and reported
  as skipped for the slow tier, marked or not: nobody has to remember a marker. Tests marked ``slow`` are known to
  be slow and are not even set up.
- A command's local runs default to two worker processes, each importing TensorFlow and loading its own model:
  seconds a run that only the tests about those processes need. Every other test's local runs (through the
  commands' defaults) run in this one process; a test marked ``worker_processes`` gets the real defaults.
"""

from __future__ import annotations

import pytest

__all__ = ["pytest_addoption", "pytest_collection_modifyitems", "pytest_runtest_protocol", "pytest_runtest_makereport",
           "local_runs_in_this_process", "worker_processes_where_marked", "slow_tier_guards"]

IN_THIS_PROCESS = ("--runner=FnApiRunner",)

# What puts a test in the slow tier: (what it starts, module, the attribute that starts it).
SLOW = (
    ("a Beam pipeline", "apache_beam.pipeline", "Pipeline.run"),
    ("a subprocess", "subprocess", "Popen.__init__"),
    ("a real backbone", "pipeline.backbones.spec", "BackboneSpec.load"),
    ("a real backbone", "pipeline.backbones.ports.mobilenet_v2", "build_mobilenet_v2"),
    ("a real backbone", "pipeline.backbones.ports.efficientnet_lite0", "build_efficientnet_lite0"),
    ("a real backbone", "pipeline.backbones.ports.minilm", "build_minilm"),
)

_started: list[str] = []  # what the running test tried to start, in the fast tier


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="the fast tier: skip every test that starts a pipeline, a subprocess or a real backbone")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fast"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _started.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed because a guard stopped it (the skip caught on the way, or raised in another thread)
    is reported as what it is: a slow-tier test, skipped."""
    outcome = yield
    report = outcome.get_result()
    if _started and (report.failed or report.skipped):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: slow tier: starts {_started[0]}")


def _stop(what: str):
    def guard(*args, **kwargs):
        _started.append(what)
        pytest.skip(f"slow tier: starts {what}")
    return guard


@pytest.fixture(scope="session", autouse=True)
def slow_tier_guards(request):
    if not request.config.getoption("--fast"):
        yield
        return
    import importlib
    import platform

    platform.processor()  # asked once a process by imports (TensorFlow's among them): `uname -p`, a subprocess
    with pytest.MonkeyPatch.context() as patch:
        for what, module, attribute in SLOW:
            owner, _, name = attribute.rpartition(".")
            target = importlib.import_module(module)
            patch.setattr(getattr(target, owner) if owner else target, name, _stop(what))
        yield


@pytest.fixture(scope="session", autouse=True)
def local_runs_in_this_process():
    """Commands' local runs in this process for the whole session; yields the product's own defaults."""
    from pipeline import flags

    product_defaults = flags.DEFAULT_LOCAL_FLAGS
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flags, "DEFAULT_LOCAL_FLAGS", IN_THIS_PROCESS)
        yield product_defaults


@pytest.fixture(autouse=True)
def worker_processes_where_marked(request, monkeypatch, local_runs_in_this_process):
    """The product's own local defaults (worker processes) for a test marked ``worker_processes``."""
    if request.node.get_closest_marker("worker_processes"):
        from pipeline import flags

        monkeypatch.setattr(flags, "DEFAULT_LOCAL_FLAGS", local_runs_in_this_process)
