"""One "machine" of the multi-writer test: judges candidates through CachedLLM into a shared run.state.

    python tests/infra/state_worker.py '<json>'   keys: state, root, storage_options, state_dir,
                                                  base_url, ids, chunk, out
It asks the safety prompt about "candidate <id>" for each id, `chunk` ids per CachedLLM.run, prints
"chunk <n>" after each (the test kills one worker between chunks' lines, mid-run), and finally writes
{"calls", "hits", "fresh": [keys answered by the endpoint]} to `out`.
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> None:
    from sip_core.config import SipConfig
    from sip_core.llm.factory import open_llm
    from sip_core.llm.prompting import load_prompt

    cfg = SipConfig.model_validate({
        "run": {"root": spec["root"], "state": spec["state"], "state_dir": spec["state_dir"],
                "storage_options": spec["storage_options"]},
        "judge": {"backend": "openai", "model": "fake-model", "base_url": spec["base_url"], "concurrency": 4}})
    llm = open_llm(cfg, "judge")
    llm.flush_rows, llm.flush_s = 4, 0.2  # small batches: a kill lands between and inside them
    prompt = load_prompt("safety")
    fresh: list[str] = []
    ids = spec["ids"]
    for n, start in enumerate(range(0, len(ids), spec["chunk"])):
        requests = [prompt.render({"seed": 0}, text=f"candidate {i}") for i in ids[start:start + spec["chunk"]]]
        fresh += [j.key for j in llm.run(requests) if not j.cached]
        print(f"chunk {n}", flush=True)
    with open(spec["out"], "w") as fh:
        json.dump({"calls": llm.calls, "hits": llm.hits, "fresh": fresh}, fh)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
