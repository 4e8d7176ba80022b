#!/usr/bin/env bash
# The GPU check of issue 16, on one GPU in under 8 minutes: each part has its own timeout, and they
# add to 450 s (train 240 + vLLM server start 120 + judge set 90) plus the python/nvidia-smi start-up:
#   1. the DPO update step, shared prefix vs two sequences per pair (our `dpo`; TRL's DPOTrainer step
#      is timed on CPU only, by benchmarks/bench_train.py), paper-like shape: 8 pairs,
#      1,920 prefix : 128 completion tokens, bf16 autocast;
#   2. rollouts, K = 16 x 128 tokens from one 1,920-token prefix: our HF engine (one prefill) vs
#      generate(num_return_sequences=16) vs vLLM offline (n=16; its prefix cache), the last when
#      vLLM is importable in SIP_PYTHON (GPU build);
#   3. one shared-prefix judge set on a vLLM server: all-pairs quality prompts of 9 candidates on a
#      256-token prefix (tests/llm/test_vllm.py's prefix-cache test), prefix-cache hit rate from the
#      server's /metrics, when SIP_VLLM_PYTHON names a python with vLLM or SIP_PYTHON imports vllm.
# Prints its own `dpo step ...`, `rollouts ...` and `vllm ...` lines (parts 1-2) and the test's
# `target vllm_prefix_cache_hit_rate` line (part 3), each also under OUT_DIR; the numbers go to the
# README's benchmark section. Tests never depend on it.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR default: ${OUT:-/tmp/sip-gpu-check}
#   SIP_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # CPU smoke run at toy shapes (times nothing;
#                                                      # without vLLM it only imports the judge step)
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

DRY="${SIP_GPU_CHECK_DRY:-0}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
log "python: $("$PY" -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())')"

# 1 + 2: DPO step and rollouts on CUDA (bench_train's measurements, with the device and shapes set here)
timeout 240 "$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/train.txt"
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

# 3: one shared-prefix judge set on a vLLM server (prefix-cache hit rate from /metrics). The test
# module lives in tests/llm and imports tests/ helpers (fake_openai), so both go on the path.
JUDGE_PY='
import os, pathlib, sys, time
sys.path[:0] = ["tests/llm", "tests"]
import test_vllm as t
run = t.test_all_pairs_judging_of_one_set_is_served_from_the_prefix_cache
url, out = os.environ.get("SIP_VLLM_URL"), pathlib.Path(sys.argv[1]) / "judge-run"
if url is None:
    print(f"judge step importable: {t.__file__}::{run.__name__} (no server: not run)")
    sys.exit(0)
out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
run(url, out)
print(f"judge set (72 requests) on the vLLM server: {time.perf_counter() - start:.1f}s")
'
VLLM_PY="${SIP_VLLM_PYTHON:-}"
if [ -z "$VLLM_PY" ] && "$PY" -c "import vllm" 2>/dev/null; then VLLM_PY="$PY"; fi
if [ -n "$VLLM_PY" ]; then
  PORT=8791
  MODEL_DIR=$("$PY" -c "from sip_core.infra.models import resolve_model; print(resolve_model('bundled:smollm2-135m-instruct'))")
  "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name smollm2-135m-instruct \
    --host 127.0.0.1 --port $PORT --dtype bfloat16 --gpu-memory-utilization 0.4 --enable-prefix-caching \
    > "$OUT/vllm-server.log" 2>&1 &
  SERVER=$!
  up=0 deadline=$(( $(date +%s) + 120 ))  # the server's start-up: 120 s at most
  while [ "$(date +%s)" -lt "$deadline" ] && kill -0 "$SERVER" 2>/dev/null; do
    if curl -sf -m 2 "http://127.0.0.1:$PORT/v1/models" >/dev/null; then up=1; break; fi
    sleep 2
  done
  if [ "$up" = 1 ]; then
    SIP_VLLM_URL="http://127.0.0.1:$PORT" timeout 90 "$PY" -c "$JUDGE_PY" "$OUT" 2>&1 | tee "$OUT/judge.txt"
    log "judge part done (rc ${PIPESTATUS[0]})"
  else
    log "judge part skipped: the vLLM server did not answer in 120 s (see $OUT/vllm-server.log)"
  fi
  kill "$SERVER" 2>/dev/null
  for _ in $(seq 1 10); do kill -0 "$SERVER" 2>/dev/null || break; sleep 1; done
  kill -9 "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
else
  if [ "$DRY" = 1 ]; then timeout 90 "$PY" -c "$JUDGE_PY" "$OUT" 2>&1 | tee "$OUT/judge.txt"; fi
  log "judge part skipped: no python with vLLM (set SIP_VLLM_PYTHON)"
fi
log "total $(( $(date +%s) - start ))s"
