#!/usr/bin/env bash
# Test-only virtualenv for the OpenMMLab toolbox fixtures (scripts/upstream/toolbox_fixtures.py):
# .upstream/toolbox-venv (gitignored) with exact versions. Idempotent: a stamp of this file's hash
# skips the install once done. Not part of capfilt's own set-up; never touches .venv.
#   PYTHON  interpreter for the venv (default python3; made with Python 3.11.7)
# Notes:
#   * torch==2.13.0 is the CPU build this machine's pip finds on disk (as scripts/setup.sh uses).
#   * torchvision 0.28.0 (the release matching torch 2.13) exists on PyPI only as a CUDA build; it
#     is installed with --no-deps and its Python code used without its C extension (shim in the
#     fixture script); mmpretrain needs it only for imports.
#   * transformers 4.33.3: its BeamHypotheses.add divides by hyp.shape[-1] (whole sequence), and it
#     is >= 4.28 as mmpretrain's "multimodal" extra asks; tokenizers 0.13.3 matches it.
#   * pycocotools: without it mmpretrain registers the BLIP classes as placeholders
#     (mmpretrain.utils.dependency.WITH_MULTIMODAL).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.upstream/toolbox-venv
PY=${PYTHON:-python3}
STAMP="$VENV/.toolbox-installed"
want=$(sha256sum scripts/upstream/toolbox_env.sh | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
pip install torch==2.13.0
pip install --no-deps torchvision==0.28.0
pip install numpy==1.26.4 mmengine==0.10.7 mmcv-lite==2.2.0 mmpretrain==1.2.0 \
  transformers==4.33.3 tokenizers==0.13.3 pycocotools==2.0.11 opencv-python==4.11.0.86 \
  pillow==13.0.0 huggingface_hub==0.36.2 safetensors==0.8.0
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
want = {"torch": "2.13.0+cpu", "torchvision": "0.28.0", "numpy": "1.26.4", "mmengine": "0.10.7",
        "mmcv-lite": "2.2.0", "mmpretrain": "1.2.0", "transformers": "4.33.3",
        "tokenizers": "0.13.3", "pycocotools": "2.0.11"}
bad = {k: m.version(k) for k, v in want.items() if m.version(k) != v}
assert not bad, f"toolbox venv: unexpected versions {bad}"
EOF
echo "$want" > "$STAMP"
