"""Stages sharing the machine: at most `lifecycle.parallel` hold a slot at once, and each gets its
share of the cores as torch threads."""

import threading
import time

from tasks.slots import compute_slot, cores, threads_per_slot


def _max_concurrency(parallel: int, workers: int = 6) -> int:
    running, peak, lock = 0, 0, threading.Lock()

    def stage():
        nonlocal running, peak
        with compute_slot(parallel):
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=stage) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return peak


def test_at_most_parallel_stages_hold_a_slot():
    assert _max_concurrency(1) == 1
    assert _max_concurrency(2) == 2
    assert _max_concurrency(3) == 3


def test_threads_per_slot_share_the_cores():
    assert threads_per_slot(1) is None  # one stage at a time keeps torch's own count
    assert threads_per_slot(2) == max(1, cores() // 2)
    assert threads_per_slot(10 * cores()) == 1


def test_with_init_takes_a_task_result_or_a_uri():
    from sip_core.config import SipConfig
    from tasks.train import TrainResult, with_init

    cfg = SipConfig()
    result = TrainResult(uri="runs/x/final", content_hash="0" * 64, artifact_id="a")
    assert with_init(cfg, "sft", None) is cfg
    assert with_init(cfg, "sft", result).sft.init == "runs/x/final"
    assert with_init(cfg, "rlmt", "runs/y/final").rlmt.init == "runs/y/final"
