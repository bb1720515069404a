# The two quick-start commands (see README): `make demo` and `make test`.
# Both run the idempotent setup first; it takes seconds when nothing changed.
PY := .venv/bin/python

.PHONY: setup demo test doctor lint
setup:
	@bash tools/setup.sh

demo: setup
	@$(PY) tools/demo.py

test: setup
	@$(PY) -m pytest

doctor: setup
	@$(PY) -m resnet_backbone.doctor

lint: setup
	@$(PY) -m ruff check resnet_backbone tools tests

# STACK=latest: the newest torch/torchvision pair (constraints-latest.txt), in the same
# .venv (switching back rebuilds nothing: mmcv wheels are kept per torch version).
.PHONY: setup-latest test-latest
setup-latest:
	@STACK=latest bash tools/setup.sh

test-latest: setup-latest
	@$(PY) -m pytest
