"""Shared fixtures: the reference outputs, the real photos, the real backbone, a small image folder, and
object-storage servers on 127.0.0.1 (a GCS emulator, a moto S3 server), one per test module."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from tests import object_storage
from tests.tiers import *  # noqa: F403  (the tiers' hooks and fixtures)

pytest_plugins = ("tests.scheduling",)  # the order the files are handed out in: longest first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("FEATUREBEAM_CACHE_DIR", tempfile.mkdtemp(prefix="featurebeam-cache-"))  # not the user's

DATA = os.path.join(os.path.dirname(__file__), "data")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def worker_env(monkeypatch):
    """Local worker processes import the tests' fake backbones from the repository root."""
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="session")
def reference():
    """Outputs of torchvision's own MobileNetV2 on scikit-learn's two sample photos (see data/REFERENCE.md)."""
    with np.load(os.path.join(DATA, "imagenet_backbones.npz")) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, bytes]:
    """The raw JPEG files behind ``sklearn.datasets.load_sample_images()``, in the reference's order."""
    import sklearn.datasets

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    photos = {}
    for name in ("china.jpg", "flower.jpg"):
        with open(os.path.join(folder, name), "rb") as f:
            photos[name] = f.read()
    return photos


@pytest.fixture(scope="session")
def mobilenet_spec():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("mobilenet_v2")


@pytest.fixture(scope="session")
def mobilenet_outputs():
    from transforms.schema.fields import OutputSpec

    return (OutputSpec("features.18", "features.18", "avg", 1280), OutputSpec("classifier", "classifier", "none", 1000))


@pytest.fixture(scope="session")
def mobilenet(mobilenet_spec, mobilenet_outputs):
    """The compiled uint8 -> {features.18, classifier} function, loaded the way a worker loads it."""
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings

    return BackboneHandler(mobilenet_spec, EmbedSettings(mobilenet_outputs, batch_size=8)).load_model()


def encode(image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, sample_photos):
    """A small ImageFolder tree: two labelled classes of real photo variants, one unlabelled image at the
    root, and two files that are not images (they must become recorded failures)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    china = Image.open(io.BytesIO(sample_photos["china.jpg"])).convert("RGB")
    flower = Image.open(io.BytesIO(sample_photos["flower.jpg"])).convert("RGB")
    files = {
        "china/original.jpg": sample_photos["china.jpg"],
        "china/left.png": encode(china.crop((0, 0, 400, 427)), "PNG"),
        "china/gray.jpg": encode(china.convert("L"), "JPEG", quality=90),
        "china/portrait.jpg": encode(china.crop((100, 0, 380, 427)), "JPEG", quality=92),
        "flower/original.jpg": sample_photos["flower.jpg"],
        "flower/small.png": encode(flower.resize((160, 107)), "PNG"),
        "flower/rgba.png": encode(flower.convert("RGBA"), "PNG"),
        "unlabelled.jpg": encode(flower.transpose(Image.FLIP_LEFT_RIGHT), "JPEG", quality=95),
        "flower/notes.txt": b"these are flowers\n",
        "china/empty.jpg": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with object_storage.gcs_emulator(str(tmp_path_factory.mktemp("gcs"))) as server:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = server.host
        from transforms.worker.storage import use_storage_emulator

        use_storage_emulator()  # no credential lookup for the test's own gs:// reads and writes
        try:
            yield server
        finally:
            if previous is None:
                del os.environ["STORAGE_EMULATOR_HOST"]
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    with object_storage.s3_server(str(tmp_path_factory.mktemp("s3"))) as server:
        yield server
        FileSystems.set_options(PipelineOptions([]))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """30 small PNGs of different colours and one file that is not an image: a folder a run embeds in seconds."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    for i in range(30):
        Image.new("RGB", (40, 30), (i * 8, 200 - i * 6, 50)).save(root / f"{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def labelled_colours(tmp_path_factory):
    """36 small PNGs in three class folders (reddish, greenish, bluish) and one file that is not an image."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(3)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(12):
            colour = [int(v) for v in rng.integers(0, 90, 3)]
            colour[c] += 160
            Image.new("RGB", (40, 30), tuple(colour)).save(root / name / f"{i:02d}.png")
    (root / "blue" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def shared_folder(tmp_path_factory, name: str, fill) -> pathlib.Path:
    """A folder that every pytest process of the run shares (``make test`` runs two): the first to ask fills it
    (``fill(folder)``), the others wait for that and use what it wrote."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each process's own
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed fill left
            folder.mkdir()
            fill(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def digits_features(tmp_path_factory):
    """The digits demo set: its PNGs (``images/train``, ``images/test``) and their real MobileNetV2 features
    (``train``, ``test``): 4 in 5 for training, every 5th held out. Made once a run."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import configure
    from pipeline.tools.demo import write_digits

    def fill(root):
        write_digits(str(root / "images" / "train"), lambda i: i % 5 != 0)
        write_digits(str(root / "images" / "test"), lambda i: i % 5 == 0)
        for split in ("train", "test"):
            options = PipelineOptions(["--runner=FnApiRunner", "--input", str(root / "images" / split),
                                       "--output", str(root / split)])
            run_extraction(configure(options), options)

    return shared_folder(tmp_path_factory, "digits", fill)


@pytest.fixture
def bracketed(tmp_path):
    """``photos [2024]/`` holding ``a*b?.jpg`` and ``cats/c[1].png``, beside ``photos 2/``, which its name read
    as a glob would match instead."""
    folder = tmp_path / "photos [2024]"
    (folder / "cats").mkdir(parents=True)
    (folder / "a*b?.jpg").write_bytes(b"A")
    (folder / "cats" / "c[1].png").write_bytes(b"C")
    (tmp_path / "photos 2").mkdir()
    (tmp_path / "photos 2" / "decoy.jpg").write_bytes(b"D")
    return folder
