"""Throughput of the LLM request layer (sip_core.llm), section by section.

    python benchmarks/bench_llm_jobs.py                      # every section
    python benchmarks/bench_llm_jobs.py --section latency --latency 0.2 --concurrency 8 32 128

Sections (each one function `section_<name>(args) -> list[dict]`, registered in SECTIONS):

  latency   OpenAIBackend against the fake OpenAI server (tests/fake_openai.py, in its own process so
            the client has this interpreter to itself) answering every request after a fixed L
            seconds. With C requests in flight the ceiling is C/L requests per second; R = 4*C
            requests (--rounds) are sent per C after one warm-up batch that opens the connections.
            Reported: measured req/s, ideal C/L, their ratio (target >= 0.9), the server's max
            in-flight count (should equal C), the client's p50/p99 latency and its CPU time per
            request. The client costs ~1 ms of CPU per request (openai client + HTTP stack), so at
            C/L in the hundreds per second it needs most of a core: the largest C is CPU-bound on a
            small or busy machine, whatever the server's latency.
  vllm      Against a running vLLM server (--vllm-url; start one with infra/vllm/serve.sh). The same
            rewrite-prompt requests (one per chunk of the bundled C4 sample) are sent as a bare
            asyncio burst (AsyncOpenAI, gather, same concurrency) and through our job path
            (CachedLLM + OpenAIBackend + a fresh DuckDB cache), bare-ours-bare so neither side gets
            all of vLLM's prefix cache; ratio = our output tokens/s over the bares' mean. Then the
            warm rerun: time and endpoint calls (should be 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from sip_core.config import LLMConfig  # noqa: E402
from sip_core.llm.backends.openai import OpenAIBackend  # noqa: E402
from sip_core.llm.types import LLMRequest, Sampling, run_sync  # noqa: E402

TARGET_RATIO = 0.9


def make_requests(n: int, tag: str = "q") -> list[LLMRequest]:
    return [LLMRequest(messages=({"role": "system", "content": "You are a judge."},
                                 {"role": "user", "content": f"{tag} {i}: which continuation is better?"}),
                       sampling=Sampling(temperature=0.0, max_tokens=16, seed=i))
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# -- section: latency ------------------------------------------------------------------------------

def section_latency(args: argparse.Namespace) -> list[dict]:
    rows = []
    with FakeOpenAI(latency=args.latency, process=not args.in_thread) as srv:
        for c in args.concurrency:
            n = args.rounds * c
            cfg = LLMConfig(backend="openai", model="fake-model", base_url=srv.base_url, concurrency=c,
                            timeout_s=30.0, max_retries=0)
            backend = OpenAIBackend(cfg)

            async def run() -> tuple[float, float, list, dict]:
                try:
                    await backend.agenerate(make_requests(c, "warm"))  # open the connections
                    before = srv.stats()
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    results = await backend.agenerate(make_requests(n))
                    return time.perf_counter() - t0, time.process_time() - cpu0, results, before
                finally:
                    await backend.aclose()

            server_cpu0 = process_cpu_s(srv)
            wall, cpu, results, before = run_sync(run())
            server_cpu = process_cpu_s(srv) - server_cpu0
            after = srv.stats()
            errors = sum(1 for r in results if not r.ok)
            lat = [r.latency_s for r in results if r.ok]
            rps = n / wall
            ideal = c / args.latency
            rows.append({"section": "latency", "L_s": args.latency, "C": c, "R": n, "wall_s": wall,
                         "req_per_s": rps, "ideal_req_per_s": ideal, "ratio": rps / ideal,
                         "max_in_flight": after["max_in_flight"], "errors": errors,
                         "server_requests": after["requests"] - before["requests"],
                         "client_cpu_ms_per_req": 1e3 * cpu / n, "client_cpu_util": cpu / wall,
                         "server_cpu_ms_per_req": 1e3 * server_cpu / n,
                         "p50_ms": 1e3 * statistics.median(lat) if lat else float("nan"),
                         "p99_ms": 1e3 * percentile(lat, 0.99) if lat else float("nan")})
            srv_note = "" if args.in_thread else " (server in a child process)"
            print(f"  latency C={c:4d} R={n:5d}: {rps:8.1f} req/s, ideal {ideal:8.1f}, "
                  f"ratio {rps / ideal:.3f}{srv_note}", flush=True)
    print()
    print(f"latency section: fake server answers after L = {args.latency:g} s; ideal = C / L")
    print(f"{'C':>5} {'R':>6} {'wall s':>8} {'req/s':>9} {'ideal':>9} {'ratio':>7} {'max infl':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} {'cpu util':>8} {'srv ms/req':>10} {'err':>4}  "
          f"target >= {TARGET_RATIO}")
    for r in rows:
        flag = "ok" if r["ratio"] >= TARGET_RATIO else "BELOW"
        print(f"{r['C']:>5} {r['R']:>6} {r['wall_s']:>8.2f} {r['req_per_s']:>9.1f} {r['ideal_req_per_s']:>9.1f} "
              f"{r['ratio']:>7.3f} {r['max_in_flight']:>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['client_cpu_ms_per_req']:>10.2f} {r['client_cpu_util']:>8.2f} {r['server_cpu_ms_per_req']:>10.2f} "
              f"{r['errors']:>4}  {flag}")
    print("cpu = CPU time of this process (the client) per request, and over the wall time; srv = the fake "
          "server process's CPU per request; on a machine whose load average exceeds its CPUs both wait to be "
          "scheduled, which neither counts")
    for r in rows:
        print(f"client_cpu_ms_per_request C={r['C']}: {r['client_cpu_ms_per_req']:.2f}")
    for r in rows:
        r["target"] = f"client_ratio_L{args.latency:g}_C{r['C']}"
    return rows


def process_cpu_s(srv: FakeOpenAI) -> float:
    """CPU seconds (user + system) of the fake server's child process so far; 0 when it runs in a
    thread of this process or /proc is unavailable."""
    proc = getattr(srv, "_proc", None)
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return 0.0


# -- section: vllm ---------------------------------------------------------------------------------

def _vllm_requests(n: int, max_tokens: int, tag: str) -> list[LLMRequest]:
    """`tag` opens every prompt, so runs with different tags share no prefix in vLLM's prefix cache:
    each timed run pays the same full prefill."""
    import gzip
    import json

    from sip_core.llm.prompting import last_words, load_prompt
    from sip_core.infra.paths import default_data_dir

    prompt = load_prompt("rewrite")
    path = default_data_dir() / "corpus" / "c4_sample" / "c4-sample.00000-of-00001.json.gz"
    texts = [json.loads(line)["text"] for line in gzip.open(path, "rt")]
    texts = [t for t in texts if len(t) > 1200][:n]
    out = []
    for t in texts:
        req = prompt.render({"max_tokens": max_tokens, "temperature": 0.0, "seed": None}, prefix=t[:800],
                            suffix=t[800:1200], prefix_ending=last_words(t[:800], 5), n_tokens=max_tokens)
        first = {**req.messages[0], "content": f"[run {tag}] " + req.messages[0]["content"]}
        out.append(LLMRequest((first, *req.messages[1:]), req.sampling, req.prompt, req.inputs))
    return out


async def _bare_burst(url: str, model: str, requests: list[LLMRequest], concurrency: int) -> tuple[float, int]:
    import asyncio

    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(req: LLMRequest) -> int:
        async with gate:
            out = await client.chat.completions.create(model=model, messages=[dict(m) for m in req.messages],
                                                       temperature=req.sampling.temperature,
                                                       max_tokens=req.sampling.max_tokens)
            return out.usage.completion_tokens

    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(r) for r in requests)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed, tokens


def section_vllm(args: argparse.Namespace) -> list[dict]:
    import tempfile

    from sip_core.llm.cache import CachedLLM, JudgmentCache

    if not args.vllm_url:
        print("skipped: pass --vllm-url http://127.0.0.1:PORT/v1 (a server from infra/vllm/serve.sh)")
        return []
    n, m = args.vllm_requests, args.vllm_max_tokens
    requests = _vllm_requests(n, m, "ours")
    cfg = LLMConfig(backend="openai", model=args.vllm_model, base_url=args.vllm_url, concurrency=args.vllm_concurrency,
                    timeout_s=600)
    run_sync(_bare_burst(args.vllm_url, args.vllm_model, _vllm_requests(4, m, "warm"), 4))  # connections, kernels
    bare = [run_sync(_bare_burst(args.vllm_url, args.vllm_model, _vllm_requests(n, m, "bare1"),
                                 args.vllm_concurrency))]
    with tempfile.TemporaryDirectory() as tmp:
        llm = CachedLLM(OpenAIBackend(cfg), JudgmentCache(Path(tmp) / "j.duckdb"))
        started = time.perf_counter()
        ours = llm.run(requests)
        ours_s = time.perf_counter() - started
        ours_tokens = llm.backend.stats["completion_tokens"]
        bare.append(run_sync(_bare_burst(args.vllm_url, args.vllm_model, _vllm_requests(n, m, "bare2"),
                                         args.vllm_concurrency)))
        rerun = CachedLLM(OpenAIBackend(cfg), JudgmentCache(Path(tmp) / "j.duckdb"))
        started = time.perf_counter()
        rerun.run(requests)
        warm_s = time.perf_counter() - started
    bare_tps = statistics.mean(tok / sec for sec, tok in bare)
    ours_tps = ours_tokens / ours_s
    row = {"requests": len(requests), "bare_tok_s": bare_tps, "ours_tok_s": ours_tps, "ratio": ours_tps / bare_tps,
           "ours_s": ours_s, "warm_rerun_s": warm_s, "warm_rerun_calls": rerun.calls,
           "errors": sum(not j.ok and j.status == "error" for j in ours)}
    print(f"{'requests':>8} {'bare tok/s':>11} {'ours tok/s':>11} {'ratio':>6} {'ours s':>7} {'warm rerun s':>13} "
          f"{'warm calls':>10} {'errors':>6}")
    print(f"{row['requests']:>8} {bare_tps:>11.1f} {ours_tps:>11.1f} {row['ratio']:>6.3f} {ours_s:>7.1f} "
          f"{warm_s:>13.3f} {rerun.calls:>10} {row['errors']:>6}")
    print(f"bare runs (s, tokens): {[(round(a, 1), b) for a, b in bare]}; target ratio >= {TARGET_RATIO}")
    return [row]


# -- registry --------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "latency": section_latency,
    "vllm": section_vllm,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    ap.add_argument("--latency", type=float, default=0.2, help="latency section: seconds per answer (L)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128], help="latency section: C values")
    ap.add_argument("--rounds", type=int, default=4, help="latency section: R = rounds * C requests")
    ap.add_argument("--in-thread", action="store_true",
                    help="latency section: run the fake server in this process (shares the GIL)")
    ap.add_argument("--vllm-url", default=None, help="vllm section: e.g. http://127.0.0.1:8011/v1")
    ap.add_argument("--vllm-model", default="smollm2-135m-instruct")
    ap.add_argument("--vllm-requests", type=int, default=64)
    ap.add_argument("--vllm-concurrency", type=int, default=64)
    ap.add_argument("--vllm-max-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; openai {__import__('openai').__version__}")
    names = list(SECTIONS) if args.section == "all" else [args.section]
    failed = False
    for name in names:
        print(f"\n== {name} ==")
        rows = SECTIONS[name](args)
        for r in rows:
            ok = r.get("ratio", 1.0) >= TARGET_RATIO
            failed |= not ok
            if "target" in r:
                print(f"target {r['target']}: {r['ratio']:.2f} (goal >= {TARGET_RATIO}) {'ok' if ok else 'BELOW'}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
