# The two quick-start commands (see README): `make demo` and `make test`.
# Both run the idempotent setup first; it takes seconds when nothing changed.
PY := .venv/bin/python

# PYTHON picks a new venv's interpreter, for setup only: exported, tools/dist_train.sh in the
# suite would run it instead of .venv's (why: docs/versions.md, "Notes behind the Makefile").
unexport PYTHON

.PHONY: setup demo test doctor lint
setup:
	@$(if $(PYTHON),PYTHON='$(PYTHON)' )bash tools/setup.sh

demo: setup
	@$(PY) tools/demo.py

# Two processes, one test file each at a time; --no-loadscope-reorder keeps
# tests/conftest.py's longest-first file order (why: docs/versions.md).
test: setup
	@$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

doctor: setup
	@$(PY) -m resnet_backbone.doctor

lint: setup
	@$(PY) -m ruff check resnet_backbone tools tests benchmarks

# STACK=latest: the newest torch/torchvision pair (constraints-latest.txt), in the same
# .venv (with MMCV_OPS=compiled, switching back rebuilds nothing: mmcv wheels are kept per
# torch version).
.PHONY: setup-latest test-latest
setup-latest:
	@$(if $(PYTHON),PYTHON='$(PYTHON)' )STACK=latest bash tools/setup.sh

test-latest: setup-latest
	@$(PY) -m pytest

# make test-matrix: every row of the tested version matrix (docs/versions.md), one after
# another, each set up in its own venv (build/matrix/<row>/venv), then tested; one summary line per
# row at the end (setup and test logs in build/matrix/<row>/). A row is pyX.Y.Z[:STACK],
# or pyX.Y.Z:compiled for MMCV_OPS=compiled (mmcv built with its own ops; its wheel comes
# from the per-torch wheel cache when one was built before). The
# interpreters are pyenv's ($(PYENV_ROOT)/versions/X.Y.Z/bin/pythonX.Y). Choose rows or
# the suite with MATRIX=... and MATRIX_PYTEST=..., e.g.
#   make test-matrix MATRIX="py3.12.1 py3.11.7:onedl" MATRIX_PYTEST="-m 'not integration' -q"
# On machines whose pip.conf caps torch, the latest row needs PIP_CONFIG_FILE=/dev/null.
# Measured times per row: docs/versions.md.
MATRIX ?= py3.10.13 py3.11.7 py3.12.1 py3.13.0 py3.11.7:latest py3.11.7:onedl py3.11.7:compiled
MATRIX_PYTEST ?= -q -p no:cacheprovider
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)

.PHONY: test-matrix
test-matrix:
	@mkdir -p build/matrix; : >build/matrix/summary.txt; for row in $(MATRIX); do \
	    v=$${row%%:*}; v=$${v#py}; stack=''; ops=''; case $$row in *:*) stack=$${row#*:};; esac; \
	    if [ "$$stack" = compiled ]; then stack=''; ops=compiled; fi; \
	    dir=$(CURDIR)/build/matrix/$$(echo "$$row" | tr : -); mkdir -p "$$dir"; \
	    echo "[test-matrix] $$row: setup (log $$dir/setup.log) ..."; t0=$$(date +%s); \
	    if PYTHON=$(PYENV_ROOT)/versions/$$v/bin/python$${v%.*} VENV=$$dir/venv STACK=$$stack MMCV_OPS=$$ops \
	            bash tools/setup.sh >"$$dir/setup.log" 2>&1; then \
	        t1=$$(date +%s); echo "[test-matrix] $$row: pytest $(MATRIX_PYTEST) (log $$dir/pytest.log) ..."; \
	        "$$dir/venv/bin/python" -m pytest $(MATRIX_PYTEST) >"$$dir/pytest.log" 2>&1; \
	        result="setup $$((t1 - t0)) s, tests $$(($$(date +%s) - t1)) s: $$(tail -n1 "$$dir/pytest.log" | tr -d =)"; \
	    else \
	        result="setup FAILED after $$(($$(date +%s) - t0)) s: $$(grep -m1 '^setup: ERROR' "$$dir/setup.log" || tail -n1 "$$dir/setup.log")"; \
	    fi; \
	    echo "$$row | $$result" >>build/matrix/summary.txt; \
	done; echo; echo '[test-matrix] summary (row | result)'; cat build/matrix/summary.txt
