"""Many writers on real parts: a real Postgres catalog, the moto S3 server for the Parquet data,
the fake OpenAI server, and 4 processes that each have their own empty local folder (4 machines).

They judge overlapping candidate sets through CachedLLM. Two are killed with -9 mid-batch, each at a
moment the test makes happen rather than waits for:
- machine0 while answers sit in its unflushed batch: the endpoint answers the first ids of its
  chunk 1 and holds every later request of that chunk, so once all its request slots hang the
  worker can do nothing more, with answers buffered that no write has taken yet;
- machine3 inside a write transaction: its first batch of chunk 3 is inserted, not committed.
Each is started again from a fresh folder (a rescheduled pod) once the others are done. Then what a
killed machine committed is stored exactly once, what it had in flight is absent and asked again by
its restart (and nothing else is), every candidate is stored exactly once, every answer a finished
machine got is stored, the endpoint was called once per key plus only the in-flight work and the
neighbours' races, and a fifth fresh process makes 0 calls.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

try:
    from postgres_server import PostgresServer, postgres_server  # noqa: F401  (fixture)
    from s3_server import S3Bucket, moto_server, s3  # noqa: F401  (fixtures)
except ImportError:  # tests/ imported as a package
    from tests.infra.postgres_server import PostgresServer, postgres_server  # noqa: F401
    from tests.s3_server import S3Bucket, moto_server, s3  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.postgres]

WORKER = Path(__file__).with_name("state_worker.py")
REPO = Path(__file__).resolve().parents[2]
SPAN, STEP, WORKERS, CHUNK = 60, 30, 4, 12  # worker w judges ids [w*STEP, w*STEP + SPAN): neighbours overlap
CONCURRENCY, FLUSH_ROWS = 4, 4
# machine0 alone judges ids 0..29. Its chunk 1 is ids 12..23: the endpoint answers 12..17 and holds
# 18..23. 12..15 fill a batch and commit; 16 and 17 wait in the next one, which (flush_s too long
# to come due) only a 4th answer would flush, while all 4 request slots hang on held ids.
HELD_BY_ENDPOINT = set(range(18, 24))
# machine3 (ids 90..149, of which it alone judges 120..149) is held inside the write transaction
# of its chunk 3's first batch (chunk 3: ids 126..137).
HOLD_CHUNK = 3
ID = re.compile(r"candidate (\d+)")


def _ids(w: int) -> list[int]:
    return list(range(w * STEP, w * STEP + SPAN))


def _own(w: int) -> set[int]:
    """The ids only machine w judges (no neighbour's range holds them)."""
    others = {i for v in range(WORKERS) if v != w for i in _ids(v)}
    return set(_ids(w)) - others


class Endpoint:
    """The fake server's fault hook: records which machine asked which id (each sends its name as
    its API key) and holds machine0's requests for HELD_BY_ENDPOINT until that client is gone."""

    def __init__(self) -> None:
        self.server = None
        self.asked: dict[str, list[int]] = defaultdict(list)
        self.held: list[int] = []

    def __call__(self, n: int, messages: list[dict]) -> str | None:  # under the server's lock
        who = self.server.auth_headers[n].removeprefix("Bearer ")
        cid = int(ID.search(messages[-1]["content"]).group(1))
        self.asked[who].append(cid)
        if who == "machine0" and cid in HELD_BY_ENDPOINT:
            self.held.append(cid)
            return "timeout"  # hangs until the client goes away (or hang_s)
        return None

    def count(self, who: str) -> Counter:
        return Counter(list(self.asked[who]))


class Machine:
    """One worker process; its stdout (its record: chunk, committed, holding lines) is read as it comes."""

    def __init__(self, tmp_path: Path, name: str, state: str, s3: S3Bucket, url: str, ids: list[int], **extra):
        self.name = name
        self.spec = {"state": state, "root": s3.uri("run"), "storage_options": s3.storage_options,
                     "state_dir": str(tmp_path / name / "state"), "base_url": url, "ids": ids, "chunk": CHUNK,
                     "out": str(tmp_path / f"{name}.json"), "who": name, "concurrency": CONCURRENCY,
                     "flush_rows": FLUSH_ROWS, **extra}
        self.err = tmp_path / f"{name}.err"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(self.spec)], stdout=subprocess.PIPE,
                                         stderr=err, text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self.holding = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("holding "):
                self.holding.set()

    def record(self, kind: str) -> set[str]:
        """The keys of its `kind` lines (committed: every batch it committed; holding: the open one)."""
        return {k for line in self.lines if line.startswith(kind + " ") for k in json.loads(line.split(" ", 1)[1])}

    def stderr(self) -> str:
        return self.err.read_text()[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.reader.join(30)
        assert self.proc.returncode == -signal.SIGKILL

    def finish(self) -> dict:
        self.proc.wait(300)
        self.reader.join(30)
        assert self.proc.returncode == 0, f"{self.name}: {self.stderr()}"
        return json.loads(Path(self.spec["out"]).read_text())


def _stored(store) -> dict[str, tuple[int, int]]:
    """key -> (candidate id, stored copies), read from the shared store."""
    rows = store.read("SELECT key, any_value(messages_json) AS m, count(*) AS n FROM judgments GROUP BY key")
    return {r["key"]: (int(ID.search(r["m"]).group(1)), r["n"]) for r in rows}


def _kill_both_mid_batch(first: Machine, third: Machine, endpoint: Endpoint, others: list[Machine]) -> None:
    """SIGKILL machine0 once every request slot of it hangs on a held id (nothing of it can run
    any more: its buffered answers stay unflushed), machine3 once it is inside its held write."""
    deadline, alive = time.monotonic() + 240, {first, third}
    while alive:
        if first in alive and len(endpoint.held) == CONCURRENCY:
            first.kill()
            alive.discard(first)
        if third in alive and third.holding.is_set():
            third.kill()
            alive.discard(third)
        for m in [*alive, *others]:
            assert m.proc.poll() is None or m in others and m.proc.returncode == 0, f"{m.name} ended: {m.stderr()}"
        assert time.monotonic() < deadline, f"not both killed mid-batch: held {endpoint.held}, {third.lines}"
        time.sleep(0.02)


def test_four_machines_share_one_cache_exactly_once_and_a_fifth_calls_nothing(
        tmp_path, postgres_server: PostgresServer, s3: S3Bucket):
    from fake_openai import FakeOpenAI

    from sip_core.config import SipConfig
    from sip_core.infra.run_context import RunContext

    state = postgres_server.state_uri()
    every = sorted({i for w in range(WORKERS) for i in _ids(w)})
    endpoint = Endpoint()
    started: list[Machine] = []
    with FakeOpenAI(latency=0.05, responder=lambda messages: "Reasoning.\nFINAL DECISION: YES",
                    faults=endpoint, hang_s=300) as server:
        endpoint.server = server

        def machine(name: str, ids: list[int], **extra) -> Machine:
            started.append(Machine(tmp_path, name, state, s3, server.base_url, ids, **extra))
            return started[-1]

        try:
            first = machine("machine0", _ids(0), flush_s=600)  # flushes by row count only: batch edges are known
            second, third_ = machine("machine1", _ids(1)), machine("machine2", _ids(2))
            fourth = machine("machine3", _ids(3), hold_chunk=HOLD_CHUNK)
            _kill_both_mid_batch(first, fourth, endpoint, [second, third_])
            results = [second.finish(), third_.finish()]

            ctx = RunContext(SipConfig.model_validate({"run": {
                "root": s3.uri("run"), "state": state, "state_dir": str(tmp_path / "check" / "state"),
                "storage_options": s3.storage_options}}))
            store = ctx.judgments_db
            before = _stored(store)  # the killed machines' work, with everything the others did
            assert {k: n for k, (_, n) in before.items() if n > 1} == {}, "stored exactly once"
            ids_before = {i for i, _ in before.values()}

            # machine0: killed with answers in its unflushed batch
            sent0 = endpoint.count("machine0")
            committed0 = first.record("committed")
            assert committed0 <= before.keys(), "every batch machine0 committed is in the store"
            committed0_ids = {before[k][0] for k in committed0}
            assert ids_before & _own(0) == committed0_ids, "of machine0's own ids, exactly what it committed"
            assert max(sent0.values()) == 1
            answered0 = set(sent0) - set(endpoint.held)
            buffered0 = answered0 - committed0_ids
            assert buffered0, "killed with answers buffered in an unflushed batch"
            assert len(buffered0) < FLUSH_ROWS, "what machine0 got and did not commit is only that batch's"
            assert not buffered0 & ids_before, "which no write took"
            inflight0 = set(sent0) - committed0_ids  # buffered + the held requests
            assert len(endpoint.held) == CONCURRENCY and inflight0 == buffered0 | set(endpoint.held)

            # machine3: killed inside an open write transaction
            sent3 = endpoint.count("machine3")
            committed3, held3 = fourth.record("committed"), fourth.record("holding")
            assert 0 < len(held3) <= FLUSH_ROWS and not held3 & committed3
            assert not held3 & before.keys(), "the batch of the open transaction: none of it is stored"
            assert committed3 <= before.keys(), "every batch machine3 committed is in the store"
            committed3_ids = {before[k][0] for k in committed3}
            assert ids_before & _own(3) == committed3_ids & _own(3), "of machine3's own ids, what it committed"
            assert max(sent3.values()) == 1
            inflight3 = set(sent3) - committed3_ids  # the held batch + requests it never read the answer of
            assert len(inflight3) <= FLUSH_ROWS + CONCURRENCY

            # rescheduled from fresh folders: each asks exactly what was not committed, once
            again = {w: machine(f"machine{w}-rescheduled", _ids(w)) for w in (0, 3)}
            reruns = {w: m.finish() for w, m in again.items()}
            after = _stored(store)
            for w, inflight, committed_ids in ((0, inflight0, committed0_ids), (3, inflight3, committed3_ids)):
                missing = set(_ids(w)) - ids_before
                asked = endpoint.count(f"machine{w}-rescheduled")
                assert sorted(asked.elements()) == sorted(missing), f"machine{w}'s restart asks only the uncommitted"
                assert {after[k][0] for k in reruns[w]["fresh"]} == missing and reruns[w]["calls"] == len(missing)
                assert inflight <= missing and not committed_ids & missing, "in-flight work re-asked, committed not"
            assert {after[k][0] for k in held3} <= inflight3
            results += reruns.values()

            assert {k: n for k, (_, n) in after.items() if n > 1} == {}, "stored exactly once"
            assert sorted(i for i, _ in after.values()) == every, "every candidate is stored"
            assert all(set(r["fresh"]) <= after.keys() for r in results), "no answer a finished machine got is lost"
            for m, r in zip([second, third_, *again.values()], results):
                asked = endpoint.count(m.name)
                assert max(asked.values()) == 1 and asked.total() == r["calls"], f"{m.name}: one call per miss"
            # every key once, plus the killed machines' in-flight work, plus neighbours asking the same
            # id at once (both missed it before either stored it): those are ids two ranges share
            total = Counter(i for ids in endpoint.asked.values() for i in ids)
            races = {i for i, n in total.items() if n > 1} - inflight0 - inflight3
            assert all(total[i] == 2 for i in races | inflight0 | inflight3)
            assert races <= {i for i in every if sum(i in _ids(w) for w in range(WORKERS)) == 2}
            asked = server.requests
            assert asked == len(every) + len(inflight0) + len(inflight3) + len(races)

            fifth = machine("machine4", every)
            rerun = fifth.finish()
            assert rerun["calls"] == 0 and rerun["hits"] == len(every)
            assert server.requests == asked, "the fifth machine made 0 endpoint calls"
            print(f"in flight at the kills: machine0 {len(buffered0)} buffered + {len(endpoint.held)} held, "
                  f"machine3 {len(held3)} in the open transaction + {len(inflight3) - len(held3)} unread; "
                  f"races {len(races)}; endpoint calls {asked} for {len(every)} keys")
        finally:
            for m in started:
                if m.proc.poll() is None:
                    m.proc.kill()
                    m.proc.wait(30)
    # the data is Parquet on the object store, the catalog in Postgres; nothing in the local folders
    assert any(key.endswith(".parquet") for key in s3.objects("run/_state/lake"))
    assert not list((tmp_path / "machine4" / "state").glob("*.duckdb"))
