# Two commands set everything up on a fresh machine:
#   make demo   - build .venv, install steadylm, run `steadylm demo`
#   make test   - build .venv with the test tools, run the whole test suite
#   make test-fast - the same without the tests marked slow (end-to-end trainings, launches, browser)
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and pinned here (this machine has a CPU build of 2.13.0 on disk;
# an unpinned torch pulls a multi-GB CUDA build). pyproject.toml only asks for a lower bound.
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.steadylm-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[test]'
	@# Debian's chromium for the browser tests of the HTML report; best effort, never fails the build
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && \
	    { { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1 || \
	      { sudo -n apt-get update -q && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1; }; } || \
	  echo "note: chromium is not installed and could not be; the browser tests will be skipped"
	rm -f $(VENV)/.steadylm-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steadylm demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The peers (lm-eval-harness, zclip) go into the same .venv; each benchmark prints ratios.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/perplexity_vs_lmeval.py --repeats 3 --out benchmarks/out/perplexity_vs_lmeval.json
	$(PY) benchmarks/train_overhead.py --out benchmarks/out/train_overhead.json
	$(PY) benchmarks/train_overhead.py --precision bf16 --warmup 2 --steps 8 --rounds 4 --no-components --out benchmarks/out/train_overhead_bf16.json
	$(PY) benchmarks/train_memory.py --out benchmarks/out/train_memory.json
	$(PY) benchmarks/clip_overhead.py --out benchmarks/out/clip_overhead.json
	$(PY) benchmarks/generation_throughput.py --out benchmarks/out/generation_throughput.json
	$(PY) benchmarks/ensemble_overhead.py --threads 1 --out benchmarks/out/ensemble_overhead.json
	$(PY) benchmarks/perturb_speed.py --out benchmarks/out/perturb_speed.json

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
