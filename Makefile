# Two set-up commands for a fresh machine: `make run` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test typecheck bench clean image-test install-test container-test

$(VENV)/.run-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[agent]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.run-installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[agent,test]'
	touch $@

run: $(VENV)/.run-installed
	$(PY) -m mbot

test: $(VENV)/.test-installed
	$(PY) -m pytest -q

# mypy over mbot/, configured in pyproject.toml ([tool.mypy]: strict on the pure cores).
typecheck: $(VENV)/.test-installed
	$(PY) -m mypy

# The container image end to end with podman (installs podman when missing; see deploy/image-test.sh).
image-test: $(VENV)/.run-installed
	PYTHON=$(PY) deploy/image-test.sh

# Containers end to end against a real Podman service on a temp socket (tests/test_containers_podman.py; podman and
# the local base image set up as for image-test). Skipped in `make test`, which must not need podman.
container-test: $(VENV)/.test-installed
	bash -c '. deploy/podman-setup.sh && MBOT_TEST_PODMAN=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_containers_podman.py'

# The one-line agent install end to end: the server here, the line in fresh Debian containers, with systemd and
# PyPI, and without either (see deploy/install-test.sh).
install-test: $(VENV)/.run-installed
	PYTHON=$(PY) deploy/install-test.sh

clean:
	rm -rf $(VENV) .pytest_cache mbot.egg-info
