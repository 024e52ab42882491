"""The GPU worker image pins the versions the launcher runs with (Beam, Python, TensorFlow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_worker_image_pins_the_launchers_versions():
    dockerfile = open(os.path.join(REPO, "deploy", "Dockerfile")).read()
    pyproject = open(os.path.join(REPO, "pyproject.toml")).read()
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:([\d.]+)$", dockerfile, re.M)
    assert base, "the image must start from the Beam SDK image"
    python, beam = _version(base.group(1)), _version(base.group(2))

    beam_low, beam_high = (_version(v) for v in re.search(r'"apache-beam\[[^\]]*\]>=([\d.]+),<([\d.]+)"',
                                                          pyproject).groups())
    assert beam_low <= beam < beam_high, (beam, beam_low, beam_high)
    import apache_beam

    assert _version(apache_beam.__version__)[:2] == beam[:2]  # the Beam this launcher submits with

    py_low, py_high = (_version(v) for v in re.search(r'requires-python = ">=([\d.]+),<([\d.]+)"',
                                                      pyproject).groups())
    assert py_low <= python < py_high, (python, py_low, py_high)

    cpu = re.search(r'"tensorflow-cpu>=([\d.]+),<([\d.]+)', pyproject).groups()
    gpu = re.search(r'"tensorflow\[and-cuda\]>=([\d.]+),<([\d.]+)"', dockerfile).groups()
    assert gpu == cpu, (gpu, cpu)                                 # the same TensorFlow release, built for CUDA
    weights = open(os.path.join(REPO, "weights-requirements.txt")).read()
    assert "--require-hashes -r weights-requirements.txt" in dockerfile and "--hash=sha256:" in weights


def test_the_image_is_also_the_flex_template_launcher():
    dockerfile = open(os.path.join(REPO, "deploy", "Dockerfile")).read()
    launcher = re.search(r"python(\d)(\d+)-template-launcher-base", dockerfile)
    beam_python = re.search(r"^FROM apache/beam_python(\d+)\.(\d+)_sdk:", dockerfile, re.M)
    assert launcher and beam_python and launcher.groups() == beam_python.groups()  # the same Python
    entry = re.search(r"^ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/featurebeam/(\S+)$", dockerfile, re.M).group(1)
    assert os.path.isfile(os.path.join(REPO, entry))
    assert re.search(rf"^COPY {os.path.dirname(entry)} ", dockerfile, re.M)
    cloudbuild = open(os.path.join(REPO, "deploy", "cloudbuild.yaml")).read()
    assert '"-f", "deploy/Dockerfile"' in cloudbuild


def test_the_default_gpu_image_is_the_one_the_build_command_names():
    from pipeline.extract.dataflow import gpu_image

    cloudbuild = open(os.path.join(REPO, "deploy", "cloudbuild.yaml")).read()
    documented = re.search(r"_IMAGE=(\S+)", cloudbuild).group(1)
    assert gpu_image("PROJECT", "REGION") == documented


def _wheel(folder, out, project: str) -> None:
    """A wheel of an empty distribution whose [project] table is ``project``."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                           'build-backend = "setuptools.build_meta"\n'
                                           '[tool.setuptools]\npy-modules = []\n' + project)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(folder))


def _pip(*args: str, python: str | None = None) -> subprocess.CompletedProcess:
    target = ["--python", python] if python else []
    done = subprocess.run([sys.executable, "-m", "pip", *target, *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)
    if python is None:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_in_the_gpu_image_tensorflow_cpu_is_satisfied_by_the_cuda_build(tmp_path):
    """A worker installing the staged sdist resolves featurebeam's tensorflow-cpu requirement: with the shim the
    installed CUDA build satisfies it (nothing to download); without it pip would have to fetch the CPU build."""
    shim = open(os.path.join(REPO, "deploy", "tensorflow_cpu_shim", "pyproject.toml")).read()
    pyproject = open(os.path.join(REPO, "pyproject.toml")).read()
    dockerfile = open(os.path.join(REPO, "deploy", "Dockerfile")).read()
    requirement = re.search(r'"(tensorflow-cpu[^"]*)"', pyproject).group(1)  # featurebeam's, marker included
    assert re.search(r'dependencies = \["(tensorflow\[and-cuda\][^"]*)"\]', shim).group(1) in dockerfile

    image, sdist = tmp_path / "image-wheels", tmp_path / "sdist-wheels"
    _wheel(tmp_path / "tensorflow", image, '[project]\nname = "tensorflow"\nversion = "2.21.3"\n'
           '[project.optional-dependencies]\nand-cuda = []\n')  # the CUDA build, as far as pip can tell
    (tmp_path / "shim").mkdir()  # built from a copy: a build writes beside its pyproject.toml
    (tmp_path / "shim" / "pyproject.toml").write_text(shim)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(image), str(tmp_path / "shim"))
    _wheel(tmp_path / "needs", sdist, f'[project]\nname = "needs-tensorflow-cpu"\nversion = "1"\n'
           f'dependencies = ["{requirement}"]\n')                 # featurebeam's requirement, nothing else

    for with_shim in (True, False):
        venv = tmp_path / f"venv-{with_shim}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        packages = ["tensorflow[and-cuda]", "tensorflow-cpu"] if with_shim else ["tensorflow[and-cuda]"]
        assert _pip("install", "--no-index", "--find-links", str(image), *packages, python=python).returncode == 0
        worker = _pip("install", "--no-index", "--find-links", str(sdist), "needs-tensorflow-cpu", python=python)
        assert (worker.returncode == 0) is with_shim, worker.stderr[-2000:]
        assert with_shim or "No matching distribution found for tensorflow-cpu" in worker.stderr, worker.stderr


def test_every_deploy_path_the_readmes_name_exists():
    for readme in ("README.md", os.path.join("deploy", "README.md")):
        text = open(os.path.join(REPO, readme)).read()
        named = set(re.findall(r"\bdeploy/[\w./-]*\w", text))
        assert named, readme
        missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
        assert not missing, (readme, missing)


def test_gpu_check_stops_with_one_line_where_there_is_no_nvidia_driver(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with the basic tools and no nvidia-smi
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(["bash", os.path.join(REPO, "deploy", "gpu_check.sh"), "--count", "10"],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check: nvidia-smi not found: no NVIDIA driver here"
    bad = subprocess.run(["bash", os.path.join(REPO, "deploy", "gpu_check.sh"), "--bogus"],
                         env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


@pytest.mark.slow
def test_where_the_dependencies_are_installed_the_staged_sdist_installs_without_an_index(tmp_path):
    """As a worker of the image installs workflow.tar.gz: the test's environment holds every dependency, as the
    image does; with the image's PIP_NO_BUILD_ISOLATION the sdist builds offline, without it pip must fetch
    setuptools for the build."""
    dockerfile = open(os.path.join(REPO, "deploy", "Dockerfile")).read()
    assert re.search(r"^ENV PIP_NO_BUILD_ISOLATION=0$", dockerfile, re.M)
    built = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist",
                            "--dist-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (sdist,) = tmp_path.glob("featurebeam-*.tar.gz")
    for isolation in ("0", None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        if isolation is not None:
            env["PIP_NO_BUILD_ISOLATION"] = isolation
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet",
                               "--disable-pip-version-check", str(sdist)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert (done.returncode == 0) is (isolation is not None), done.stderr[-2000:]
        assert isolation is not None or "setuptools" in done.stderr, done.stderr[-2000:]
