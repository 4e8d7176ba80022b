"""Throughput of `sip prepare` against the bare policy tokenizer on the same corpus.

    python benchmarks/bench_prepare.py --docs 20000

Builds a JSONL.gz corpus by repeating the bundled C4 sample (read in place) with a distinct id per
copy, then measures, on the same texts, in `--rounds` rounds of:

  bare tokenizer   the policy's fast tokenizer called as users call it, `tokenizer(batch,
                   add_special_tokens=False)` over every text, `data.tokenize_batch` texts a call,
                   file reading excluded: the baseline for any pipeline that tokenizes the corpus.
  bare ids only    for reference, the Rust encoder's `encode_batch_fast` (ids, no offsets) on the
                   same texts: what the chunk stage calls where token byte lengths give the cuts.
  pipeline         sip_core.data.prepare: ingest -> filter -> chunk, fresh run root, everything included
                   (reading and hashing the source, Parquet writes, lineage).
  prepare flow     flows.prepare.prepare(cfg), fresh run root, after a warm-up flow run on 20 docs
                   so that the one-off start of Prefect's temporary server is not counted.

Each measurement runs in a fresh Python process that has imported its modules and loaded the one
tokenizer it uses before its clock starts: loading tokenizer after tokenizer in one process makes
each encode slower than the last (see benchmarks/README.md), which would favour whichever row ran
first.

Tokens/s of the pipeline and the flow is the bare tokenizer's token count (all documents) over their
own wall time, so their ratio to the bare tokenizer is the ratio of wall times (target: >= 0.7).
This machine's speed drifts by +-25% over minutes, so each round times the baseline right before the
pipelines and takes the ratio within the round; the result is the median round. `cpu s` is CPU time
over all threads and worker processes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
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
TARGET_RATIO = 0.7  # the prepare pipeline and flow keep >= 0.7 of the bare tokenizer's tokens/s
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


def bench_ids_only(tokenizer, texts: list[str], batch: int) -> tuple[float, float]:
    encode = tokenizer.backend_tokenizer.encode_batch_fast
    clock = Clock().start()
    for i in range(0, len(texts), batch):
        encode(texts[i:i + batch], add_special_tokens=False)
    return clock.read()


def bench_pipeline(cfg) -> dict:
    from sip_core.infra.run_context import RunContext
    from sip_core.data.prepare import _tokenizer, filter_documents, ingest_documents, materialize_chunks

    env, stages = RunContext(cfg), {}
    _tokenizer(env)  # loaded before the clock, as the baseline's is
    total, clock = Clock().start(), Clock().start()
    docs = ingest_documents(env)
    stages["ingest"] = clock.read()
    clock.start()
    filtered = filter_documents(env, docs)
    stages["filter"] = clock.read()
    clock.start()
    chunks = materialize_chunks(env, filtered)
    stages["chunk"] = clock.read()
    return {"time": total.read(), "stages": stages,
            "stats": {"docs": docs.stats, "filtered": filtered.stats, "chunks": chunks.stats}}


def bench_flow(cfg, warm_cfg) -> dict:
    from flows.prepare import prepare

    clock = Clock().start()
    prepare(warm_cfg)  # starts Prefect's temporary server and loads the tokenizer: a one-off cost, not counted
    warmup = clock.read()[0]
    clock.start()
    out = prepare(cfg)
    return {"time": clock.read(), "warmup": warmup, "chunks": out["chunks"].stats}


def measure(kind: str, corpus: Path, root: str, config: str | None, result: Path) -> None:
    """One measurement, in this (fresh) process; its result goes to `result` as JSON."""
    from sip_core.config import load_config
    from sip_core.infra.models import load_tokenizer

    cfg = load_config(config, [f"run.root={root}", f"data.source={corpus}"])
    if kind in ("bare", "ids"):
        texts = read_texts(corpus)
        tokenizer = load_tokenizer(cfg.model.policy, cfg.model.cache_dir)
        out = {"time": (bench_tokenizer if kind == "bare" else bench_ids_only)(tokenizer, texts, cfg.data.tokenize_batch)}
    elif kind == "pipeline":
        out = bench_pipeline(cfg)
    else:
        warm = load_config(config, [f"run.root={root}-warmup", f"data.source={corpus.parent / 'warmup' / corpus.name}"])
        out = bench_flow(cfg, warm)
    result.write_text(json.dumps(out))


def run_measure(kind: str, corpus: Path, root: Path, config: str | None) -> dict:
    """`measure` in a child process (its output in `<root>.log`)."""
    result, log = Path(f"{root}.json"), Path(f"{root}.log")
    cmd = [sys.executable, __file__, "--measure", kind, "--corpus", str(corpus), "--root", str(root),
           "--result", str(result)] + (["--config", config] if config else [])
    with log.open("w") as fh:
        if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"bench_prepare: the {kind} measurement failed; its output:\n{log.read_text()[-4000:]}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="corpus size in documents (default 20000)")
    parser.add_argument("--out", help="work dir for the corpus and run roots (default: a temp dir, removed after)")
    parser.add_argument("--config", help="base YAML config (default: the built-in defaults, as `sip prepare`)")
    parser.add_argument("--no-flow", action="store_true", help="skip the Prefect flow (faster)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (default 3)")
    parser.add_argument("--measure", choices=["bare", "ids", "pipeline", "flow"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # a child process: one measurement
        measure(args.measure, Path(args.corpus), args.root, args.config, Path(args.result))
        return 0

    from sip_core.config import load_config
    from sip_core.infra.paths import default_data_dir

    work = Path(args.out or tempfile.mkdtemp(prefix="bench-prepare-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    load_before = os.getloadavg()[0]
    try:
        corpus = build_corpus(default_data_dir() / C4_SAMPLE, args.docs, work)
        build_corpus(default_data_dir() / C4_SAMPLE, 20, work / "warmup")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg = load_config(args.config, [f"data.source={corpus}"])
        kinds = ["bare", "ids", "pipeline"] + ([] if args.no_flow else ["flow"])
        rounds, warmup = [], None
        for r in range(args.rounds):
            row = {}
            for kind in kinds:
                out = run_measure(kind, corpus, work / f"{kind}-{r}-{stamp}", args.config)
                row[kind] = out["time"]
                if kind == "pipeline":
                    row["stages"], stats = out["stages"], out["stats"]
                if kind == "flow":
                    warmup = out["warmup"]
                    if out["chunks"] != stats["chunks"]:
                        print(f"WARNING: the flow's chunk stats differ from the pipeline's: {out['chunks']} vs "
                              f"{stats['chunks']}")
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {row[k][0]:.2f}s" for k in kinds), flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    n, tokens = args.docs, rounds[0]["bare"][2]
    labels, split = stats["filtered"]["labels"], stats["chunks"]["chunks"]
    names = {"bare": "bare tokenizer (baseline)", "ids": "bare ids only (encode_batch_fast)",
             "pipeline": "pipeline (sip_core.data.prepare)", "flow": "prepare flow (Prefect, warm server)"}
    # every row from one round: the median round of the pipeline's ratio
    ratio = {key: [row["bare"][0] / row[key][0] for row in rounds] for key in names if key in rounds[0]}
    mid = sorted(range(len(rounds)), key=ratio["pipeline"].__getitem__)[len(rounds) // 2]
    print(f"\nbench_prepare  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    print(f"corpus: {n} docs (bundled C4 sample repeated), {tokens:,} tokens; tokenize_batch "
          f"{cfg.data.tokenize_batch}; policy {cfg.model.policy}; {len(rounds)} rounds, round {mid + 1} (the median) shown")
    print(f"filter: unsafe {labels.get('unsafe', 0)}, rest {labels.get('rest', 0)}, excluded "
          f"{labels.get('excluded', 0)} -> {split.get('train', 0)} train + {split.get('heldout', 0)} held-out chunks\n")
    print(f"{'':37}{'wall s':>8}{'cpu s':>8}{'docs/s':>8}{'tokens/s':>11}{'ratio':>7}   ratio per round")
    for key, ratios in ratio.items():
        wall, cpu = rounds[mid][key][:2]
        print(f"{names[key]:37}{wall:8.2f}{cpu:8.2f}{n / wall:8.0f}{tokens / wall:11,.0f}{ratios[mid]:7.2f}   "
              + " ".join(f"{x:.2f}" for x in ratios))
    for row in rounds:
        pipe = row["pipeline"][0]
        print("pipeline stages (wall/cpu s): " + ", ".join(
            f"{k} {wall:.2f}/{cpu:.2f} ({wall / pipe:.0%})" for k, (wall, cpu) in row["stages"].items()))
    if warmup is not None:
        print(f"prepare flow: not counted, the warm-up flow run on 20 docs that starts the temporary Prefect "
              f"server took {warmup:.1f}s (last round)")
    print("ratio = tokens/s over the bare tokenizer's tokens/s in the same round (same token count: bare wall / "
          "wall); the median round counts")
    met = []
    for key in ("pipeline", "flow"):
        if key in ratio:
            value = ratio[key][mid]
            met.append(value >= TARGET_RATIO)
            print(f"target prepare_{key}_vs_bare_tokenizer: {value:.2f} (goal >= {TARGET_RATIO}) "
                  f"{'ok' if met[-1] else 'BELOW'}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
