"""The judgment cache's store: the local DuckDB file (baseline) vs DuckLake on a Postgres catalog.

    python benchmarks/bench_state.py                 # 100k keys, batches of 1000, 2 rounds
    python benchmarks/bench_state.py --keys 20000 --s3   # also DuckLake with its Parquet on moto S3

Sections, each store measured in the same run, in alternating rounds (the best round is kept, as a
busy machine only ever makes a round slower):

  inserts   `--keys` fresh judgments written through JudgmentCache.store in batches of `--batch`
            (each batch one insert-if-absent transaction; on DuckLake one write turn): keys/s.
  lookups   the same keys looked up in batches of `--batch`, half of each batch stored, half not
            (a rerun's mix), after a DuckLake store merged its files (as its writers do): keys/s.
  overhead  what the cache adds to a judge call: CachedLLM.run over an instant in-process backend
            (runs of 64 requests, all misses: lookup, call, store, lookup counters) minus the same
            backend called directly, per request, in ms. Goal <= 1.0 on the local file.

A real Postgres server is started for the run (tests/infra/postgres_server.py; the Debian
`postgresql` package). Ends with `target` lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "infra"))

OVERHEAD_GOAL_MS = 1.0
# A judge fleet answers at most a few thousand calls per second (256 in flight at ~0.1-1 s each per
# process): the shared store must keep up with several such processes writing and rerunning.
INSERT_GOAL, LOOKUP_GOAL = 2_000, 10_000


def _key(i: int) -> str:
    return hashlib.sha256(f"judgment {i}".encode()).hexdigest()


def _rows(keys: Sequence[str]) -> list[dict]:
    now = datetime.now(timezone.utc)
    return [{"key": k, "model_id": "bench", "prompt": "safety@1", "messages_json": '[{"role":"user"}]',
             "sampling_json": '{"seed":0}', "seed": 0, "raw_output": "Looks fine.\nFINAL DECISION: YES",
             "parsed_json": "true", "status": "ok", "parse_error": None, "error": None, "prompt_tokens": 300,
             "completion_tokens": 20, "latency_s": 0.5, "attempts": 1, "created_at": now, "flow_run_id": None,
             "task_run_id": None} for k in keys]


def inserts_and_lookups(store, keys: int, batch: int) -> dict:
    from sip_core.llm.judgment_cache import JudgmentCache

    cache = JudgmentCache(store)
    names = [_key(i) for i in range(keys)]
    started = time.perf_counter()
    for i in range(0, keys, batch):
        cache.store(_rows(names[i:i + batch]))
    insert_s = time.perf_counter() - started
    assert cache.count() == keys
    if hasattr(store, "compact"):  # what a long-lived store looks like (each writer compacts every 200 batches)
        store.compact(expire=False)
    started, found = time.perf_counter(), 0
    for i in range(0, keys, batch):
        half = batch // 2
        asked = names[i:i + half] + [_key(keys + i + j) for j in range(batch - half)]
        found += len(cache.lookup(asked))
    lookup_s = time.perf_counter() - started
    return {"inserts_per_s": keys / insert_s, "lookups_per_s": keys / lookup_s, "hit_share": found / keys}


def overhead_ms(store, calls: int, run: int = 64) -> float:
    """ms per request that CachedLLM adds over calling the backend directly (all misses)."""
    from sip_core.llm.cache import CachedLLM
    from sip_core.llm.judgment_cache import JudgmentCache
    from sip_core.llm.prompting import load_prompt
    from sip_core.llm.types import LLMBackend, LLMResult

    class Instant(LLMBackend):
        kind, model_id = "instant", "instant:1"

        async def agenerate(self, requests, progress=None, on_result=None):
            out = []
            for i, _ in enumerate(requests):
                out.append(LLMResult(text="FINAL DECISION: YES"))
                if on_result:
                    on_result(i, out[-1])
            return out

    prompt = load_prompt("safety")
    tag = os.urandom(4).hex()  # fresh keys every call of this function: every request is a miss
    requests = [prompt.render({"seed": 0}, text=f"overhead {tag} {i}") for i in range(calls)]
    backend, llm = Instant(), CachedLLM(Instant(), JudgmentCache(store))
    started = time.perf_counter()
    for i in range(0, calls, run):
        backend.generate(requests[i:i + run])
    bare = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, calls, run):
        llm.run(requests[i:i + run])
    cached = time.perf_counter() - started
    assert llm.calls == calls
    return (cached - bare) / calls * 1000


def _stores(tmp: Path, pg, args, s3_options: dict | None) -> dict:
    from sip_core.infra.state import open_state

    out = {"local-file": lambda r: open_state(None, tmp / f"local-{r}", str(tmp / "root")).judgments,
           "ducklake-postgres": lambda r: open_state(pg.state_uri(f"bench_{r}"), tmp / "node", str(tmp / f"root-{r}")).judgments}
    if s3_options is not None:
        out["ducklake-postgres-s3"] = lambda r: open_state(pg.state_uri(f"bench_s3_{r}"), tmp / "node",
                                                           f"s3://bench-state/r{r}", s3_options).judgments
    return out


def _moto() -> tuple[subprocess.Popen, dict]:
    """moto's S3 server in its own process (not this interpreter's threads), one bucket."""
    import boto3

    from postgres_server import _free_port

    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="b", aws_secret_access_key="b",
                         region_name="us-east-1").create_bucket(Bucket="bench-state")
            break
        except Exception:
            time.sleep(0.1)
    return proc, {"endpoint_url": endpoint, "key": "b", "secret": "b", "client_kwargs": {"region_name": "us-east-1"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--overhead-calls", type=int, default=2048)
    parser.add_argument("--s3", action="store_true", help="also DuckLake with its data on a moto S3 server")
    args = parser.parse_args(argv)
    from postgres_server import local_postgres

    moto, s3_options = _moto() if args.s3 else (None, None)
    results: dict[str, list[dict]] = {}
    try:
        with local_postgres() as pg, tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
            stores = _stores(Path(tmp), pg, args, s3_options)
            for r in range(args.rounds):
                for name, make in stores.items():
                    row = inserts_and_lookups(make(r), args.keys, args.batch)
                    row["overhead_ms"] = overhead_ms(make(r), args.overhead_calls)
                    results.setdefault(name, []).append(row)
                    print(f"round {r} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    finally:
        if moto:
            moto.terminate()
    return report(results, args)


def report(results: dict[str, list[dict]], args) -> int:
    best = {name: {"inserts_per_s": max(r["inserts_per_s"] for r in rows),
                   "lookups_per_s": max(r["lookups_per_s"] for r in rows),
                   "overhead_ms": min(r["overhead_ms"] for r in rows)} for name, rows in results.items()}
    print(f"\n{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.keys} keys, "
          f"batches of {args.batch}, best of {args.rounds} rounds")
    print(json.dumps(best, indent=1))
    targets = [("cache_overhead_ms_per_call", best["local-file"]["overhead_ms"], "<=", OVERHEAD_GOAL_MS)]
    for name, b in best.items():
        if name != "local-file":
            targets += [(f"{name}_inserts_per_s", b["inserts_per_s"], ">=", INSERT_GOAL),
                        (f"{name}_lookups_per_s", b["lookups_per_s"], ">=", LOOKUP_GOAL)]
    targets += [("local_file_inserts_per_s", best["local-file"]["inserts_per_s"], ">=", INSERT_GOAL),
                ("local_file_lookups_per_s", best["local-file"]["lookups_per_s"], ">=", LOOKUP_GOAL)]
    failed = 0
    for name, value, op, goal in targets:
        ok = value <= goal if op == "<=" else value >= goal
        failed += not ok
        print(f"target {name}: {value:.4g} (goal {op} {goal:g}) {'ok' if ok else 'BELOW'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
