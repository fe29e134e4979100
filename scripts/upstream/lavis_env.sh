#!/usr/bin/env bash
# Test-only virtualenv for the UPSTREAM LAVIS fixtures (scripts/upstream/lavis_fixtures.py):
#   .upstream/lavis-venv (gitignored), Python 3.11, exact versions below. Idempotent: a stamp holds the
#   hash of this script; a second run with the same script does nothing.
# Why these versions
#   salesforce-lavis 1.0.2 --no-deps: its declared requirements pull decord, opencv, spacy, streamlit, ...
#     that the BLIP/BLIP-2 model modules never import (the fixture script imports those modules without
#     running lavis' package __init__ files; see its header).
#   transformers 4.26.1: LAVIS 1.0.2 pins >=4.25,<4.27 and breaks with 4.27+ (generate() then expands every
#     model_kwargs tensor by num_beams, on top of LAVIS's own repeat_interleave). tokenizers 0.13.3 is the
#     newest its pin (<0.14) allows with a cp311 wheel; huggingface-hub 0.17.3 (<1.0).
#   timm 0.4.12 and fairscale 0.4.4: LAVIS's pins (fairscale is an sdist: built without isolation, against the
#     torch installed here, so pip does not fetch another torch into the build environment).
#   torch 2.14.1 + torchvision 0.29.1: the pair this machine has on disk for Python 3.11 (CUDA build, run on
#     the CPU); the CPU-only torch 2.13.0 on disk has no torchvision that imports beside it, and LAVIS's
#     blip_image_eval processor is torchvision transforms.
#   everything else: exact versions of what these resolved to on 2026-12 (installed --no-deps, so nothing is
#     re-resolved).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${LAVIS_VENV:-.upstream/lavis-venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.lavis-env-installed"
want=$(sha256sum scripts/upstream/lavis_env.sh | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "lavis env: installing into $VENV (one time, a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" >&2 || true; }
pip install torch==2.14.1 torchvision==0.29.1
pip install --no-deps salesforce-lavis==1.0.2
pip install --no-deps wheel setuptools
pip install --no-deps --no-build-isolation fairscale==0.4.4
pip install --no-deps \
  transformers==4.26.1 tokenizers==0.13.3 huggingface-hub==0.17.3 safetensors==0.8.0 \
  timm==0.4.12 omegaconf==2.4.0 iopath==0.1.10 portalocker==4.4.2 \
  numpy==2.4.6 pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6 pillow==13.0.0 \
  PyYAML==6.0.4 regex==2026.11.19 requests==2.34.2 certifi==2026.10.19.post1 charset-normalizer==3.5.3 \
  idna==3.20 urllib3==2.8.0 tqdm==4.70.1 packaging==26.4 filelock==4.3.1 typing_extensions==4.16.0
"$VENV/bin/python" - <<'EOF'
from importlib import metadata as m
want = {"salesforce-lavis": "1.0.2", "transformers": "4.26.1", "tokenizers": "0.13.3", "timm": "0.4.12",
        "fairscale": "0.4.4", "torch": "2.14.1", "torchvision": "0.29.1"}
bad = [f"{k} {m.version(k)} (want {v})" for k, v in want.items() if not m.version(k).startswith(v)]
if bad:
    raise SystemExit("lavis env: wrong versions: " + ", ".join(bad))
import torch, torchvision, transformers, timm, fairscale, omegaconf, iopath, pandas  # noqa: F401
EOF
echo "$want" > "$STAMP"
