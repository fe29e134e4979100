# The two commands of the README. Both set up .venv first (scripts/setup.sh, a no-op once done):
# torch, then exactly the versions of requirements.lock (refreshed by `make lock`).
PY := .venv/bin/python
PYTEST_ARGS := -m "not slow" -q

.PHONY: setup demo test test-slow test-latest lock

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) jobs/capfilt.py --demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow -q

# The tests against the newest releases pyproject's ranges allow, not the lock: its own
# virtualenv .venv-latest (looked up again once a day), set up by the same script.
test-latest:
	@CAPFILT_LOCK=none CAPFILT_VENV=.venv-latest bash scripts/setup.sh
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# Rewrites requirements.lock from pyproject's ranges, keeping pins that still fit;
# `make lock LOCK_ARGS=--upgrade` takes the newest releases instead.
lock:
	@bash scripts/lock.sh $(LOCK_ARGS)
