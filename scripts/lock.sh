#!/usr/bin/env bash
# Refreshes requirements.lock: the exact version of every package scripts/setup.sh installs
# (pyproject's dependencies and the extras test, bench, transitively), from pyproject's ranges.
# Tool: uv pip compile, because it resolves for a stated target (CPython 3.11, manylinux_2_28 x86_64)
# without building a virtualenv, can keep torch out of the lock while locking the dependencies of
# torch's CPU build, and takes seconds on two cores where pip-compile's pip resolver takes minutes.
#
#   scripts/lock.sh                    follow pyproject's changes, keep every other pin
#   scripts/lock.sh --upgrade          the newest releases pyproject's ranges allow
#   scripts/lock.sh -P transformers    upgrade one package (and what it needs)
#
# torch is not in the lock: setup.sh installs it first (TORCH_SPEC, default torch==2.13.0, the
# CPU build on CPU hosts, a CUDA build on GPU hosts). The lock is resolved against TORCH_LOCK's
# CPU wheel, so torch's own dependencies are pinned and no nvidia-*/CUDA package enters it.
# Needs the package index (PyPI) and, for the CPU torch wheel, TORCH_WHEELS (a local folder of
# wheels) or the PyTorch CPU index. uv is installed, pinned, into a throwaway virtualenv unless UV
# names one.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements.lock
LOCK_PYTHON=3.11
LOCK_PLATFORM=x86_64-manylinux_2_28
TORCH_LOCK=${TORCH_LOCK:-torch==2.13.0+cpu}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
UV_VERSION=0.13.9

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "${UV:-}" ]; then
  "${PYTHON:-python3}" -m venv "$tmp/uv"
  "$tmp/uv/bin/python" -m pip --disable-pip-version-check -q install "uv==$UV_VERSION" 2>&1 \
    | grep -v "is ignored: it is neither" || true
  UV="$tmp/uv/bin/uv"
fi
echo "$TORCH_LOCK" > "$tmp/torch.txt"
if [ -d "$TORCH_WHEELS" ]; then
  torch_src=(--find-links "$TORCH_WHEELS")
else
  torch_src=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

"$UV" pip compile pyproject.toml --extra test --extra bench \
  --python-version "$LOCK_PYTHON" --python-platform "$LOCK_PLATFORM" \
  --override "$tmp/torch.txt" -c scripts/lock-constraints.txt "${torch_src[@]}" --no-emit-package torch \
  --custom-compile-command "scripts/lock.sh" --quiet -o "$LOCK" "$@"

if grep -qiE '^(nvidia-|cuda-|triton==)' "$LOCK"; then
  echo "scripts/lock.sh: $LOCK has CUDA packages (torch resolved to a CUDA build?)" >&2
  exit 1
fi
# First line: the Python that scripts/setup.sh requires of a virtualenv before it installs the lock.
{ echo "# capfilt lock: python $LOCK_PYTHON, $LOCK_PLATFORM; resolved with $TORCH_LOCK, which scripts/setup.sh installs first (TORCH_SPEC)"
  grep -v '^# capfilt lock:' "$LOCK"; } > "$tmp/lock" && cat "$tmp/lock" > "$LOCK"
echo "scripts/lock.sh: $LOCK: $(grep -cE '^[A-Za-z0-9]' "$LOCK") packages pinned" >&2
