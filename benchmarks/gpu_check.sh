#!/usr/bin/env bash
# The GPU check of issue 16, timed on one GPU in under 8 minutes (each part has its own timeout):
#   1. the DPO update step, shared prefix vs two sequences per pair (and TRL's step), paper-like
#      shape: 8 pairs, 1,920 prefix : 128 completion tokens, bf16 autocast;
#   2. rollouts, K = 16 x 128 tokens from one 1,920-token prefix: our HF engine (one prefill) vs
#      generate(num_return_sequences=16) vs vLLM offline (n=16; its prefix cache), when vLLM is
#      importable in the project's venv (GPU build);
#   3. one shared-prefix judge set on a vLLM server: all-pairs quality prompts of 9 candidates on a
#      256-token prefix, prefix-cache hit rate from the server's /metrics, when `vllm` is on PATH
#      or SIP_VLLM_PYTHON names a python with vLLM.
# Prints the `target ...` lines of benchmarks/bench_train.py and a hit-rate line; the numbers go
# to the README's benchmark section. Tests never depend on it.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR default: ${OUT:-/tmp/sip-gpu-check}
#
# Needs a python with a CUDA build of torch and the project installed (SIP_PYTHON, default
# .venv/bin/python; this project's CPU venv has torch+cpu). Not run yet: no GPU was lent so far.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/sip-gpu-check}}"
mkdir -p "$OUT"
PY="${SIP_PYTHON:-.venv/bin/python}"
export PREFECT_HOME="$OUT/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false
start=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/summary.txt"; }

# SIP_GPU_CHECK_DRY=1: a CPU smoke run of the script at toy shapes (checks it runs, times nothing)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
log "python: $("$PY" -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())')"

# 1 + 2: DPO step and rollouts on CUDA (bench_train's functions with the device and shapes set here)
timeout 300 "$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/train.txt"
import gzip, json, statistics, sys, time
import torch
from sip_core.infra.paths import default_data_dir
from sip_core.infra.models import load_causal_lm, resolve_model
from sip_core.training.objectives import Pairs, dpo
from sip_core.training.rollout import HFRolloutEngine, SamplingSpec

import os
DRY = os.environ.get("SIP_GPU_CHECK_DRY") == "1"  # a CPU smoke run of this script at toy shapes
dev, dt = torch.device("cpu" if DRY else "cuda"), torch.bfloat16
sync = (lambda: None) if DRY else torch.cuda.synchronize
ref = "bundled:smollm2-135m-instruct"
policy, tok = load_causal_lm(ref, dev, trainable=True)
reference, _ = load_causal_lm(ref, dev)
P, C, N = (32, 8, 2) if DRY else (1920, 128, 8)
def long_rows(n, length):
    """Rows of real text: the bundled C4 sample's documents end to end, cut every `length` tokens
    (few documents alone reach 2,048 tokens)."""
    stream = []
    for path in sorted((default_data_dir() / "corpus" / "c4_sample").glob("*.json.gz")):
        for line in gzip.open(path, "rt"):
            stream += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            if len(stream) >= n * length:
                return [stream[i * length:(i + 1) * length] for i in range(n)]
    raise SystemExit("the bundled sample is too small")

rows = long_rows(2 * N, P + C)
pairs = Pairs([r[:P] for r in rows[:N]], [r[P:] for r in rows[:N]], [r[P:] for r in rows[N:]])
opt = torch.optim.AdamW(policy.parameters(), lr=1e-7)

def step(shared):
    sync(); t = time.perf_counter()
    with torch.autocast(dev.type, dtype=dt):
        loss, _ = dpo(policy, pairs, tok.pad_token_id, dev, reference=reference, shared_prefix=shared)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    sync(); return time.perf_counter() - t

step(True); step(False)
times = {True: [], False: []}
for _ in range(1 if DRY else 5):
    for shared in (False, True):
        times[shared].append(step(shared))
s, t = statistics.median(times[True]), statistics.median(times[False])
print(f"dpo step {N} pairs {P}:{C} bf16: shared prefix {s*1e3:.0f} ms, two sequences {t*1e3:.0f} ms, ratio {s/t:.2f}")
if not DRY:
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

K, NEW = (4, 4) if DRY else (16, 128)
prompt = rows[0][:P]
engine = HFRolloutEngine(policy, tok, dev, batch_size=K, autocast_dtype=dt)
spec = SamplingSpec(NEW, 1.0, 1.0, True, 0)
ids = torch.tensor([prompt], device=dev)

def hf_generate():
    with torch.autocast(dev.type, dtype=dt), torch.no_grad():
        policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                        num_return_sequences=K, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=tok.pad_token_id)

def timed(fn):
    sync(); t = time.perf_counter(); fn(); sync(); return time.perf_counter() - t

timed(hf_generate); timed(lambda: engine.generate([prompt], K, spec))
ours = statistics.median(timed(lambda: engine.generate([prompt], K, spec)) for _ in range(3))
base = statistics.median(timed(hf_generate) for _ in range(3))
print(f"rollouts K={K} x {NEW} from {P}: ours {K*NEW/ours:.0f} tok/s, generate(num_return_sequences) "
      f"{K*NEW/base:.0f} tok/s, ratio {base/ours:.2f}")
try:
    from vllm import LLM, SamplingParams
except ImportError:
    print("vllm offline: not importable in this python (skipped)")
else:
    del policy, reference, opt; torch.cuda.empty_cache()
    llm = LLM(model=resolve_model(ref), dtype="bfloat16", gpu_memory_utilization=0.5, enable_prefix_caching=True)
    params = SamplingParams(n=K, max_tokens=NEW, min_tokens=NEW, seed=0)
    llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": rows[1][:P]}], params, use_tqdm=False)
    v = time.perf_counter() - t
    print(f"vllm offline rollouts K={K} x {NEW} from {P}: {K*NEW/v:.0f} tok/s ({v/ours:.2f}x our HF engine's time)")
EOF
log "train part done (rc ${PIPESTATUS[0]})"

# 3: one shared-prefix judge set on a vLLM server (prefix-cache hit rate from /metrics)
VLLM_PY="${SIP_VLLM_PYTHON:-}"
if [ -z "$VLLM_PY" ] && "$PY" -c "import vllm" 2>/dev/null; then VLLM_PY="$PY"; fi
if [ -n "$VLLM_PY" ]; then
  PORT=8791
  MODEL_DIR=$("$PY" -c "from sip_core.infra.models import resolve_model; print(resolve_model('bundled:smollm2-135m-instruct'))")
  "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name smollm2-135m-instruct \
    --host 127.0.0.1 --port $PORT --dtype bfloat16 --gpu-memory-utilization 0.4 --enable-prefix-caching \
    > "$OUT/vllm-server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 90); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 2; done
  SIP_VLLM_URL="http://127.0.0.1:$PORT" timeout 180 "$PY" - <<'EOF' 2>&1 | tee "$OUT/judge.txt"
import os, sys, time
sys.path.insert(0, "tests")
import test_vllm as t
url = os.environ["SIP_VLLM_URL"]
start = time.perf_counter()
t.test_all_pairs_judging_of_one_set_is_served_from_the_prefix_cache(url, __import__("pathlib").Path(os.environ.get("OUT", "/tmp")))
print(f"judge set (72 requests) on the vLLM server: {time.perf_counter() - start:.1f}s")
EOF
  log "judge part done (rc ${PIPESTATUS[0]})"
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
else
  log "judge part skipped: no python with vLLM (set SIP_VLLM_PYTHON)"
fi
log "total $(( $(date +%s) - start ))s"
