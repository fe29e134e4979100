# The two commands of the README. Both set up .venv first (scripts/setup.sh, a no-op once done).
PY := .venv/bin/python

.PHONY: setup demo test test-slow

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) jobs/capfilt.py --demo

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q
