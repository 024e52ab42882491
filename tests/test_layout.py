"""The rules of the code's layout (README, Layout), checked on the tree itself: modules and functions small
enough to read in one pass, dependencies one way, every DoFn ready where it starts, one backbone protocol."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import apache_beam as beam
import pytest

REPO = Path(__file__).resolve().parents[1]

PACKAGES = ("pipeline", "transforms")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 80


def _modules():
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_no_module_is_longer_than_300_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _modules()}
    long = {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_longer_than_80_lines():
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.name}"] = lines
    assert long == {}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_transforms_import_nothing_from_pipeline():
    upward = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "pipeline")
              for p in (REPO / "transforms").rglob("*.py")}
    assert {path: names for path, names in upward.items() if names} == {}


def test_every_transforms_module_sits_in_a_stage_or_a_service():
    loose = sorted(p.name for p in (REPO / "transforms").glob("*.py") if p.name != "__init__.py")
    assert loose == []


def _all_modules():
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                yield importlib.import_module(info.name)


def test_every_dofn_readies_its_process_where_it_starts():
    from transforms.worker.process import WorkerDoFn

    dofns = {f"{module.__name__}.{name}": cls for module in _all_modules()
             for name, cls in inspect.getmembers(module, inspect.isclass)
             if issubclass(cls, beam.DoFn) and cls.__module__ == module.__name__}
    assert len(dofns) > 20
    assert sorted(name for name, cls in dofns.items() if not issubclass(cls, WorkerDoFn)) == []


@pytest.mark.parametrize("name", ["MeanColourBackbone", "PoisonedBackbone"])
def test_test_backbones_satisfy_the_backbone_protocol(name, tmp_path):
    from tests import fakes
    from transforms.embed.protocol import Backbone

    assert isinstance(getattr(fakes, name)(str(tmp_path / "loads.log")), Backbone)


def test_backbone_specs_satisfy_the_backbone_protocol():
    from pipeline.backbones.spec import BackboneSpec
    from transforms.decode.images import ImagePreprocessing
    from transforms.embed.protocol import Backbone

    prep = ImagePreprocessing(resize_shorter=8, crop=8, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    spec = BackboneSpec("b", "w.h5", "0" * 64, prep, {"x": (2,)}, "x", "test")
    assert isinstance(spec, Backbone)


def test_the_settings_that_decide_vectors_are_recorded_under_their_run_json_names():
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    out = OutputSpec("v", "v", "avg", 3)
    settings = EmbedSettings([out], batch_size=7, threads=2, model_copies=1, precision="bfloat16", max_pixels=99)
    assert settings.outputs == (out,)
    assert settings.recorded() == {"outputs": [out.to_json()], "precision": "bfloat16", "max_image_pixels": 99,
                                   "max_audio_seconds": 4 * 3600}
    assert EmbedSettings.flags_of("max_image_pixels") == "--max-image-pixels"
    assert EmbedSettings.flags_of("batch_size") is None
