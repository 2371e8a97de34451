# Set-up and entry points. Every target installs what it needs first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --no-cache-dir --disable-pip-version-check -q

.PHONY: setup setup-gpu gpu-torch-given demo test test-slow bench samples replay-refs artifacts transfer

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

# a CUDA torch in place of the CPU wheel (docs/gpu.md), e.g. on an x86 GPU box or a DGX Spark (aarch64):
#   make setup-gpu TORCH_INDEX=https://download.pytorch.org/whl/cu130      or   make setup-gpu TORCH_WHEEL=torch-....whl
TORCH ?= torch==2.13.0
setup-gpu: gpu-torch-given $(STAMP)
	$(PY) -m pip uninstall -y -q torch
	$(PIP) $(if $(TORCH_WHEEL),$(TORCH_WHEEL),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple $(TORCH))
	$(PY) -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"

gpu-torch-given:
	@test -n "$(TORCH_INDEX)$(TORCH_WHEEL)" || { echo "make setup-gpu: give TORCH_INDEX=URL (e.g. https://download.pytorch.org/whl/cu130) or TORCH_WHEEL=FILE" >&2; exit 2; }

demo: $(STAMP)
	$(VENV)/bin/fair demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py

# the student on all 12 scenarios x both cameras (segments cached in runs/scenario_suite) -> docs/benchmarks/scenarios.md
bench-scenarios: $(STAMP)
	$(PY) bench/scenarios_bench.py

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
