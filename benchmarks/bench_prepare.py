"""Throughput of `sip prepare` against the bare policy tokenizer on the same corpus.

    python benchmarks/bench_prepare.py --docs 20000

Builds a JSONL.gz corpus by repeating the bundled C4 sample (read in place) with a distinct id per
copy, then measures, in one process and on the same texts:

  bare tokenizer   the policy's fast tokenizer batch-encoding every text (`data.tokenize_batch` texts a
                   call, add_special_tokens=False), tokenizer already loaded, file reading excluded:
                   the ceiling for any pipeline that tokenizes the corpus. Run before and after the
                   pipelines; the faster run counts (the stricter ratio on a busy machine).
  pipeline         sip_core.prepare: ingest -> filter -> chunk, fresh run root, everything included
                   (reading and hashing the source, tokenizer loading, Parquet writes, lineage).
  prepare flow     flows.prepare.prepare(cfg), fresh run root, after a warm-up flow run on 20 docs
                   so that the one-off start of Prefect's temporary server is not counted.

Tokens/s of the pipeline and the flow is the bare tokenizer's token count (all documents) over their
own wall time, so their ratio to the bare tokenizer is the ratio of wall times (target: >= 0.7).
`cpu s` is CPU time over all threads and worker processes: steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# Before anything starts a thread pool or Prefect reads its settings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Said out loud, so the filter stage's forked workers do not warn that the tokenizer ran before the fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

C4_SAMPLE = "corpus/c4_sample/c4-sample.00000-of-00001.json.gz"


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """Wall and CPU time since start()."""

    def start(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def build_corpus(sample: Path, n_docs: int, out: Path) -> Path:
    """Repeat the sample up to n_docs records; each copy gets its own ids ("c4-<copy>-<line>")."""
    with gzip.open(sample, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(n_docs):
            copy, line = divmod(i, len(records))
            fh.write(json.dumps({"id": f"c4-{copy}-{line}", **records[line]}) + "\n")
    return path


def read_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def bench_tokenizer(tokenizer, texts: list[str], batch: int) -> tuple[float, float, int]:
    tokenizer(texts[:batch], add_special_tokens=False)  # first call warms the Rust side
    tokens, clock = 0, Clock().start()
    for i in range(0, len(texts), batch):
        tokens += sum(map(len, tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]))
    return *clock.read(), tokens


def bench_pipeline(cfg) -> tuple[tuple[float, float], dict[str, tuple[float, float]], dict]:
    from sip_core.prepare import StageEnv, filter_documents, ingest_documents, materialize_chunks

    env, stages, total = StageEnv(cfg), {}, Clock().start()
    clock = Clock().start()
    docs = ingest_documents(env)
    stages["ingest"] = clock.read()
    clock.start()
    filtered = filter_documents(env, docs)
    stages["filter"] = clock.read()
    clock.start()
    chunks = materialize_chunks(env, filtered)
    stages["chunk"] = clock.read()
    return total.read(), stages, {"docs": docs.stats, "filtered": filtered.stats, "chunks": chunks.stats}


def bench_flow(cfg, warmup_cfg) -> tuple[tuple[float, float], float, dict]:
    from flows.prepare import prepare

    clock = Clock().start()
    prepare(warmup_cfg)  # starts Prefect's temporary server: a one-off cost, not counted
    warmup = clock.read()[0]
    clock.start()
    out = prepare(cfg)
    return clock.read(), warmup, out["chunks"]["stats"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="corpus size in documents (default 20000)")
    parser.add_argument("--out", help="work dir for the corpus and run roots (default: a temp dir, removed after)")
    parser.add_argument("--config", help="base YAML config (default: the built-in defaults, as `sip prepare`)")
    parser.add_argument("--no-flow", action="store_true", help="skip the Prefect flow (faster)")
    args = parser.parse_args(argv)

    from sip_core.config import load_config
    from sip_core.models import load_tokenizer
    from sip_core.paths import default_data_dir

    work = Path(args.out or tempfile.mkdtemp(prefix="bench-prepare-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    load_before = os.getloadavg()[0]
    try:
        corpus = build_corpus(default_data_dir() / C4_SAMPLE, args.docs, work)
        warm_corpus = build_corpus(default_data_dir() / C4_SAMPLE, 20, work / "warmup")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

        def config(root: str, source: Path):
            return load_config(args.config, [f"run.root={work / root}-{stamp}", f"data.source={source}"])

        cfg = config("pipeline", corpus)
        texts = read_texts(corpus)
        tokenizer = load_tokenizer(cfg.model.policy, cfg.model.cache_dir)
        bare = [bench_tokenizer(tokenizer, texts, cfg.data.tokenize_batch)]

        pipe, stages, stats = bench_pipeline(cfg)
        flow = None
        if not args.no_flow:
            flow = bench_flow(config("flow", corpus), config("warmup/flow", warm_corpus))
        bare.append(bench_tokenizer(tokenizer, texts, cfg.data.tokenize_batch))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    n, (tok_wall, tok_cpu, tokens) = args.docs, min(bare)
    labels, split = stats["filtered"]["labels"], stats["chunks"]["chunks"]
    print(f"\nbench_prepare  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    print(f"corpus: {n} docs (bundled C4 sample repeated), {tokens:,} tokens; tokenize_batch "
          f"{cfg.data.tokenize_batch}; policy {cfg.model.policy}")
    print(f"filter: unsafe {labels.get('unsafe', 0)}, rest {labels.get('rest', 0)}, excluded "
          f"{labels.get('excluded', 0)} -> {split.get('train', 0)} train + {split.get('heldout', 0)} held-out chunks\n")
    print(f"{'':37}{'wall s':>8}{'cpu s':>8}{'docs/s':>8}{'tokens/s':>11}{'ratio':>7}")
    rows = [("bare tokenizer (best of 2)", (tok_wall, tok_cpu)), ("pipeline (sip_core.prepare)", pipe)]
    if flow is not None:
        rows.append(("prepare flow (Prefect, warm server)", flow[0]))
    for name, (wall, cpu) in rows:
        print(f"{name:37}{wall:8.2f}{cpu:8.2f}{n / wall:8.0f}{tokens / wall:11,.0f}{tok_wall / wall:7.2f}")
    print("\npipeline stages (wall/cpu s): " + ", ".join(
        f"{k} {wall:.2f}/{cpu:.2f} ({wall / pipe[0]:.0%})" for k, (wall, cpu) in stages.items()))
    print(f"bare tokenizer runs (wall s): {', '.join(f'{b[0]:.2f}' for b in bare)}")
    if flow is not None:
        print(f"prepare flow: not counted, the warm-up flow run on 20 docs that starts the temporary Prefect "
              f"server took {flow[1]:.1f}s")
        if flow[2] != stats["chunks"]:
            print(f"WARNING: the flow's chunk stats differ from the pipeline's: {flow[2]} vs {stats['chunks']}")
    print("ratio = tokens/s over the bare tokenizer's tokens/s (same token count: bare wall / wall); target >= 0.7")
    return 0


if __name__ == "__main__":
    sys.exit(main())
