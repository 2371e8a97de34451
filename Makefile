# Set-up and entry points. Every target installs what it needs first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --no-cache-dir --disable-pip-version-check -q

.PHONY: setup demo test test-slow bench samples replay-refs artifacts transfer

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# clang: tinygrad's CPU backend; ffmpeg: the tests check our videos with Debian's ffprobe
	@command -v clang >/dev/null && command -v ffprobe >/dev/null || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends clang ffmpeg; }
	@test -x $(PY) || python3.11 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	@# Meta's CoTracker code is not on PyPI: tests take its package out of the napari-cotrack wheel (not vendored)
	$(PY) -m tools.fair.teachers.fetch_cotracker --target $(VENV)/extern
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/fair demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py

# issue 5's teacher -> student experiment on generated data (~1 h on 2 cores); ships the distilled student
transfer: $(STAMP)
	$(PY) -m tools.fair.experiments.transfer --preset full --out runs/transfer --ship

samples: $(STAMP)
	$(PY) -m tools.fair.samples --regenerate

# after an intended model change: the bundled student's outputs on the samples become the replay gate's references
replay-refs: $(STAMP)
	$(PY) -m tools.fair.replay_ref --update

artifacts: $(STAMP)
	$(VENV)/bin/scons -Q
