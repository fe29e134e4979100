#!/usr/bin/env bash
# One set-up path for a fresh machine: a virtualenv at $CAPFILT_VENV (default .venv) with torch
# installed first, then exactly the versions of requirements.lock, then capfilt itself (editable,
# no dependencies of its own). Idempotent and quiet when done; a drift from the lock fails.
#   CAPFILT_VENV  the virtualenv (default .venv)
#   PYTHON        the interpreter that creates it (default python3; the lock is for Python 3.11)
#   TORCH_SPEC    the torch installed first when the virtualenv has none (default torch==2.13.0, the
#                 CPU build on a CPU host; a GPU host names its CUDA build, with the CUDA index set)
#   CAPFILT_LOCK  the lock to install (default requirements.lock, written by scripts/lock.sh);
#                 "none": the newest releases pyproject's ranges allow instead (make test-latest),
#                 looked up again once a day
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CAPFILT_VENV:-.venv}
PY=${PYTHON:-python3}
LOCK=${CAPFILT_LOCK:-requirements.lock}
STAMP="$VENV/.capfilt-installed"
if [ "$LOCK" = none ]; then
  want=$({ sha256sum pyproject.toml scripts/setup.sh; echo "latest $(date -u +%F)"; } | sha256sum | cut -c1-16)
else
  [ -f "$LOCK" ] || { echo "capfilt setup: no $LOCK (scripts/lock.sh writes it)" >&2; exit 1; }
  want=$(sha256sum pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -c1-16)
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "capfilt setup: installing into $VENV (one time, a few minutes)" >&2
if [ "$LOCK" != none ]; then
  # The lock was resolved for one Python (its first line); another one could need other packages.
  lock_py=$(sed -n '1s/^# capfilt lock: python \([0-9.]*\),.*/\1/p' "$LOCK")
  [ -x "$VENV/bin/python" ] && vpy="$VENV/bin/python" || vpy="$PY"
  have_py=$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$lock_py" ] && [ "$have_py" != "$lock_py" ]; then
    echo "capfilt setup: $LOCK is for Python $lock_py, $vpy is $have_py" \
         "(PYTHON=python$lock_py, or CAPFILT_LOCK=none for the newest releases instead)" >&2
    exit 1
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip() {
  local rc=0
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" >"$tmp/pip.log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither" "$tmp/pip.log" >&2 || true
  [ "$rc" = 0 ] || { echo "capfilt setup: pip $1 failed" >&2; exit 1; }
}
# torch first: a bare "torch" requirement would pull a multi-GB CUDA build on a CPU host.
# TORCH_SPEC lets a GPU host choose its CUDA build (e.g. TORCH_SPEC="torch==2.13.0"); a torch the
# virtualenv has is kept, and held where it is while the rest installs.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >"$tmp/torch.txt"
# img2dataset checks for albumentations updates over the network at import unless told not to.
export NO_ALBUMENTATIONS_UPDATE=1
if [ "$LOCK" = none ]; then
  pip install --upgrade --upgrade-strategy eager -c "$tmp/torch.txt" -e ".[test,bench]"
else
  # The lock is complete (torch's own dependencies included), so nothing is resolved here:
  # exactly its versions land, and pip check below catches a lock that misses one.
  pip install --no-deps -c "$tmp/torch.txt" -r "$LOCK"
  pip install --no-deps -e .
fi
if ! "$VENV/bin/python" -m pip --disable-pip-version-check check >"$tmp/check.log" 2>&1; then
  echo "capfilt setup: inconsistent dependencies in $VENV:" >&2; cat "$tmp/check.log" >&2; exit 1
fi
# Installed versions against the lock: a difference fails (CAPFILT_LOCK=none: listed, as news).
"$VENV/bin/python" - "$LOCK" "$VENV" <<'EOF'
import re, sys
from importlib import metadata
lock, venv = sys.argv[1:]
path = "requirements.lock" if lock == "none" else lock
try:
    text = open(path).read()
except FileNotFoundError:
    sys.exit(0)  # CAPFILT_LOCK=none without a lock: nothing to compare with
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = {norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M)}
have = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
# torch and what it brought (a CUDA build's nvidia-* packages) are not the lock's business.
torch_deps = {norm(re.match(r"[A-Za-z0-9._-]+", r)[0]) for r in metadata.requires("torch") or []}
diff = [f"{n} {have[n]} (lock {v})" for n, v in sorted(pins.items()) if n in have and have[n] != v]
diff += [f"{n} missing (lock {v})" for n, v in sorted(pins.items()) if n not in have]
extra = [f"{n} {have[n]}" for n in sorted(set(have) - set(pins) - torch_deps - {"torch", "capfilt", "pip"})]
if lock == "none":
    news = diff + [f"{e} (not in the lock)" for e in extra]
    for line in news:
        print(f"capfilt setup: {venv} differs from {path}: {line}", file=sys.stderr)
    print(f"capfilt setup: {venv} has the newest releases; {len(news)} differ from {path}", file=sys.stderr)
    sys.exit(0)
if extra:
    print(f"capfilt setup: {venv} also has, not from {lock}: {', '.join(extra)}", file=sys.stderr)
if diff:
    sys.exit(f"capfilt setup: {venv} differs from {lock}:\n  " + "\n  ".join(diff))
EOF
"$VENV/bin/python" -c "import torch, transformers, ray, pyarrow, duckdb, webdataset, img2dataset" \
  || { echo "capfilt setup: install incomplete" >&2; exit 1; }
echo "$want" > "$STAMP"
