#!/usr/bin/env bash
# Creates .venv with the pinned stack. Idempotent: a complete venv (marker file) is left alone.
#
# Order matters (see README, set-up): torch first, then fbgemm, then torchrec with --no-deps because its
# metadata names the CUDA package `fbgemm-gpu`; on a GPU host set FBGEMM=fbgemm-gpu==1.8.0.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
FBGEMM=${FBGEMM:-fbgemm-gpu-cpu==1.8.0}
MARKER="$VENV/.torchrec_aes_env_v3"

if [ -f "$MARKER" ]; then
  exit 0
fi
command -v "$PYTHON" >/dev/null || PYTHON=python3
echo "Setting up $VENV (about a minute) ..."
"$PYTHON" -m venv "$VENV"
# The resolver's complaint that torchrec wants `fbgemm-gpu` is expected and harmless; hide it and the
# machine-local index warnings, keep real errors (set -o pipefail still fails the script).
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
    { grep -v -e "^WARNING: Location" -e "fbgemm-gpu" -e "dependency resolver" -e "^torchrec 1.8.0" || true; }
}
pip_install torch==2.13.0
pip_install "$FBGEMM"
pip_install --no-deps torchrec==1.8.0
pip_install tensordict==0.15.3 torchmetrics==1.0.3 tqdm pyre-extensions iopath==0.1.10 torchx==0.7.0 \
  tensorboard==2.21.0 numpy==2.4.6 PyYAML==6.0.3 matplotlib==3.11.2 scikit-learn==1.9.1 \
  pytest==9.2.0 ruff==0.17.6 mypy==2.4.1
# For `torchx --dryrun -s kubernetes`: kubernetes 37 needs urllib3>=2, which torchx 0.7 does not accept.
pip_install kubernetes==36.0.3 urllib3==1.26.20
pip_install --no-deps -e .
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, torchx; print('torchrec', torchrec.__version__)"
touch "$MARKER"
