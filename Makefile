# The two README commands: `make demo` (the notebooks on the embedded data) and `make test` (every test).
PRESET ?= demo
OUT ?= outputs/$(PRESET)
PY := .venv/bin/python

.PHONY: setup demo test test-fast lab sync-notebooks check-notebooks clean

setup:
	bash scripts/setup_env.sh

demo: setup
	TUMORLIB_DATA=$${TUMORLIB_DATA:-embedded} TUMORLIB_PRESET=$(PRESET) TUMORLIB_OUT=$(CURDIR)/$(OUT) $(PY) -m tumorlib notebooks --out $(OUT)

test: setup
	TUMORLIB_DATA=embedded TUMORLIB_PRESET=ci TUMORLIB_HOME=$(CURDIR)/.tumorlib/test $(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg tests notebooks -p no:cacheprovider --durations=30

test-fast: setup
	TUMORLIB_DATA=embedded TUMORLIB_PRESET=ci TUMORLIB_HOME=$(CURDIR)/.tumorlib/test $(PY) -m pytest tests -m "not slow and not browser"

lab: setup
	$(PY) -m jupyter lab notebooks

# Regenerate each .ipynb's cells from its .py (outputs are re-created by executing under the ci preset).
sync-notebooks: setup
	for f in notebooks/*.py; do $(PY) -m jupytext --to ipynb --update "$$f"; done

check-notebooks: setup
	$(PY) -m pytest tests/test_notebooks.py

clean:
	rm -rf outputs .tumorlib .pytest_cache
