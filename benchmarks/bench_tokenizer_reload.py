"""Why bench_prepare.py measures each row in a fresh process: in one process, every freshly loaded
tokenizer encodes more slowly than the one before, while one tokenizer reused keeps its speed.

    python benchmarks/bench_tokenizer_reload.py --docs 8000 --loads 5

Encodes the same texts (the bundled C4 sample repeated) `--loads` times with `encode_batch_fast`:
first reusing one tokenizer, then loading a new one before each pass (the old one deleted and
garbage-collected). Prints each pass's wall time over the very first pass (one tokenizer, first
use) and the process's resident memory.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=8000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()

    from sip_core.config import load_config
    from sip_core.infra.models import load_tokenizer
    from sip_core.infra.paths import default_data_dir

    cfg = load_config(None, [])
    with gzip.open(default_data_dir() / "corpus/c4_sample/c4-sample.00000-of-00001.json.gz", "rt") as fh:
        sample = [json.loads(line)["text"] for line in fh if line.strip()]
    texts = (sample * (args.docs // len(sample) + 1))[:args.docs]
    batch = cfg.data.tokenize_batch

    def load():
        return load_tokenizer(cfg.model.policy, cfg.model.cache_dir)

    def encode(tokenizer) -> float:
        fast, start = tokenizer.backend_tokenizer.encode_batch_fast, time.perf_counter()
        for i in range(0, len(texts), batch):
            fast(texts[i:i + batch], add_special_tokens=False)
        return time.perf_counter() - start

    print(f"{len(texts)} docs, tokenize_batch {batch}, policy {cfg.model.policy}")
    tokenizer, times = load(), []
    for name, fresh in (("one tokenizer reused", False), ("a new tokenizer each pass", True)):
        for k in range(args.loads):
            if fresh:
                del tokenizer
                gc.collect()
                tokenizer = load()
            times.append(encode(tokenizer))
            print(f"{name:26} pass {k + 1}: {times[-1]:6.2f} s  x{times[-1] / times[0]:.2f}  rss {rss_mb():.0f} MB",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
