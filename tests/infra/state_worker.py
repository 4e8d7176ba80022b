"""One "machine" of the multi-writer test: judges candidates through CachedLLM into a shared run.state.

    python tests/infra/state_worker.py '<json>'   keys: state, root, storage_options, state_dir,
                                                  base_url, ids, chunk, out, who
                                                  (optional: concurrency, flush_rows, flush_s, hold_chunk)
It asks the safety prompt about "candidate <id>" for each id, `chunk` ids per CachedLLM.run, and
finally writes {"calls", "hits", "fresh": [keys answered by the endpoint]} to `out`. `who` is sent
as the API key, so the fake endpoint knows which machine asked what.

Its stdout is its progress record, one line each:
    chunk <n>                 chunk n is done
    committed <json keys>     a batch's write transaction committed (printed once store() returned)
    holding <json keys>       (hold_chunk only) inside the write transaction of chunk `hold_chunk`'s
                              first batch: its rows are inserted, nothing is committed, and the
                              worker waits there to be killed
"""

from __future__ import annotations

import json
import sys
import time


def _record_commits(llm, batch: list[str]) -> None:
    store = llm.cache.store

    def store_and_record(rows):
        batch[:] = [row["key"] for row in rows]
        added = store(rows)
        if rows:
            print("committed " + json.dumps(batch), flush=True)
        return added

    llm.cache.store = store_and_record


def _hold_inside_write(llm, batch: list[str], armed) -> None:
    state = llm.cache.state
    write = state.write

    def write_maybe_held(fn, turn=True):
        if not (turn and armed()):  # turn: the judgments' insert-if-absent (lookup counters pass False)
            return write(fn, turn)

        def insert_then_hold(con):
            result = fn(con)
            print("holding " + json.dumps(batch), flush=True)
            time.sleep(600)  # the test kills -9 here: the transaction is open, its rows inserted
            return result

        return write(insert_then_hold, turn)

    state.write = write_maybe_held


def main(spec: dict) -> None:
    from sip_core.config import SipConfig
    from sip_core.llm.factory import open_llm
    from sip_core.llm.prompting import load_prompt

    cfg = SipConfig.model_validate({
        "run": {"root": spec["root"], "state": spec["state"], "state_dir": spec["state_dir"],
                "storage_options": spec["storage_options"]},
        "judge": {"backend": "openai", "model": "fake-model", "base_url": spec["base_url"],
                  "concurrency": spec.get("concurrency", 4)}})
    llm = open_llm(cfg, "judge", api_key=spec["who"])
    llm.flush_rows, llm.flush_s = spec.get("flush_rows", 4), spec.get("flush_s", 0.2)  # small batches
    batch: list[str] = []
    current = [-1]
    _record_commits(llm, batch)
    if spec.get("hold_chunk") is not None:
        _hold_inside_write(llm, batch, lambda: current[0] == spec["hold_chunk"])
    prompt = load_prompt("safety")
    fresh: list[str] = []
    ids = spec["ids"]
    for n, start in enumerate(range(0, len(ids), spec["chunk"])):
        current[0] = n
        requests = [prompt.render({"seed": 0}, text=f"candidate {i}") for i in ids[start:start + spec["chunk"]]]
        fresh += [j.key for j in llm.run(requests) if not j.cached]
        print(f"chunk {n}", flush=True)
    with open(spec["out"], "w") as fh:
        json.dump({"calls": llm.calls, "hits": llm.hits, "fresh": fresh}, fh)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
