# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
# Both create the virtualenv (.venv) and install prx with its dependencies first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv quickstart test test-quick clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[test,hf,mds,diffusers,trackers,slurm]'
	touch $@

venv: $(VENV)/.installed

quickstart: venv   ## train the embedded default (about 10 minutes on 2 CPU cores)
	$(VENV)/bin/prx run recipes/quickstart.toml

test: venv         ## the whole suite (what CI runs)
	$(PY) -m pytest -n 2 --dist loadfile -q

test-quick: venv   ## everything but the slow end-to-end tests
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
