# The README's two commands: `make demo` and `make test`. Both set up .venv
# first (created when missing, reinstalled when pyproject.toml or the lock
# file changed, or when it was made by another Python).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_DISABLE_TELEMETRY := 1
# Nothing is downloaded by the demo or the tests: fail fast instead of retrying the Hub.
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED := 0

.PHONY: setup demo test lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	@if [ -x $(VPY) ] && ! $(VPY) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(int(x) for x in "'"$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"'".split(".")))'; then \
		echo "[setup] .venv was made by another Python: recreating"; rm -rf $(VENV); fi
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	$(VPY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/anydoor demo --jobs 2

test: setup
	$(VPY) -m pytest -q

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(VPY) benchmarks/bench_pairs.py

clean:
	rm -rf $(VENV) outputs
