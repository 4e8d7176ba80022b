"""The `sip` command as a user runs it: a job whose model calls all fail ends in one line, exit 1;
bad input ends in one line, exit 2, before any stage runs; kill -9 leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_rewrite_against_a_dead_endpoint_fails_in_one_line_and_commits_nothing(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "rewrite", "--config", str(ROOT / "configs" / "smoke.yaml"),
           "--limit", "4", "--set", f"run.root={tmp_path}", "--set", "rewriter.backend=openai",
           "--set", "rewriter.base_url=http://127.0.0.1:9/v1", "--set", "rewriter.max_retries=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sip: error:")]
    assert errors == ["sip: error: rewrite: 4 of 4 model calls failed (first: connection error after 1 attempts (last: http://127.0.0.1:9/v1)); "
                      "nothing was committed and the items stay queued for the next run"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "rewrites").rglob("_manifest.json"))


# --------------------------------------------------------------------------- bad input: one line, exit 2, first


SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _sip(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run `sip` in this process; its exit code and its stderr lines."""
    from flows.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def _one_error(lines: list[str], *named: str) -> str:
    errors = [line for line in lines if line.startswith("sip: error:")]
    assert len(errors) == 1, lines
    for text in named:
        assert text in errors[0], errors[0]
    return errors[0]


def test_override_that_is_not_yaml(capsys):
    code, lines = _sip(capsys, "config", "show", "--set", "data.source=[unclosed")
    assert code == 2
    _one_error(lines, "data.source=[unclosed", "not YAML")


def test_corrupt_parquet_source_fails_before_any_stage(capsys, tmp_path):
    bad = tmp_path / "docs.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    code, lines = _sip(capsys, "prepare", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                       "--set", f"data.source={bad}")
    assert code == 2
    _one_error(lines, str(bad), "not a readable Parquet file")
    assert not (tmp_path / "run").exists()  # nothing was ingested


def test_model_folder_without_a_model_fails_before_ingest(capsys, tmp_path):
    (tmp_path / "mymodel").mkdir()
    code, lines = _sip(capsys, "rewrite", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                       "--set", f"model.policy={tmp_path / 'mymodel'}")
    assert code == 2
    _one_error(lines, str(tmp_path / "mymodel"), "holds no model")
    assert not (tmp_path / "run").exists()


def test_run_root_below_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, lines = _sip(capsys, "prepare", "--config", SMOKE, "--set", f"run.root={tmp_path / 'afile' / 'run'}")
    assert code == 2
    _one_error(lines, "run.root", str(tmp_path / "afile"), "is a file")


def test_relative_source_that_exists_here_is_a_path_not_a_hub_id(capsys, tmp_path, monkeypatch):
    from sip_core.config import load_config
    from sip_core.data.readers import resolve_source

    (tmp_path / "mydata_folder" / "part").mkdir(parents=True)
    (tmp_path / "mydata_folder" / "part" / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "empty_folder").mkdir()
    monkeypatch.chdir(tmp_path)
    src = resolve_source(load_config(SMOKE, ["data.source=mydata_folder"]).data)
    assert src.kind == "files" and src.files == (str(tmp_path / "mydata_folder" / "part" / "a.jsonl"),)
    code, lines = _sip(capsys, "prepare", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                       "--set", "data.source=empty_folder")
    assert code == 2  # read as a folder (with no data file in it), never sent to the Hub
    _one_error(lines, "empty_folder", "no data file")


def test_unknown_hub_model_fails_fast_offline(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, lines = _sip(capsys, "prepare", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                       "--set", "model.policy=nosuchorg/nosuchmodel")
    assert code == 2
    _one_error(lines, "nosuchorg/nosuchmodel", "HF_HUB_OFFLINE")


def test_unknown_hub_model_online_is_not_retried(monkeypatch):
    """A 404 from the Hub is an answer: one request, one line. An unreachable Hub is one line too."""
    import httpx
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from sip_core.infra.models import ModelRefError, check_model

    asked = []

    def not_found(repo_id, timeout=None):
        asked.append(repo_id)
        url = f"https://huggingface.co/api/models/{repo_id}"
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found",
                                      response=httpx.Response(404, request=httpx.Request("GET", url)))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", not_found)
    try:
        check_model("nosuchorg/nosuchmodel")
        raise AssertionError("an unknown repo passed the check")
    except ModelRefError as exc:
        assert "no such model on the Hugging Face Hub" in str(exc) and "\n" not in str(exc)
    assert asked == ["nosuchorg/nosuchmodel"]


def test_lineage_of_a_missing_path(capsys, tmp_path):
    code, lines = _sip(capsys, "lineage", str(tmp_path / "nope" / "x.parquet"))
    assert code == 2
    _one_error(lines, str(tmp_path / "nope" / "x.parquet"))


def test_only_transient_errors_are_retried():
    import errno

    from tasks.runs import is_transient

    unknown_repo = OSError("nosuchorg/nosuchmodel is not a local folder and is not a valid model identifier")
    assert not is_transient(unknown_repo)
    assert not is_transient(FileNotFoundError(2, "gone")) and not is_transient(PermissionError(13, "no"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNREFUSED, "refused")) and not is_transient(OSError(errno.EINVAL, "x"))
    wrapped = OSError("couldn't connect to the store")
    wrapped.__cause__ = ConnectionRefusedError()
    assert is_transient(wrapped)


# --------------------------------------------------------------------------- kill -9 leaves nothing behind


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (non-zombie) process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), cmdline)
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs, found, frontier = _processes(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in procs.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("command, running", [("prepare", "uvicorn"), ("pretrain", "sip_core.recipes.pretrain")])
def test_kill_9_of_sip_leaves_no_process_behind(tmp_path, command, running):
    """Killed once `running` is a descendant (prepare: the temporary Prefect server; pretrain: the
    recipe process it launched), nothing sip started outlives it."""
    import signal
    import time

    cmd = [sys.executable, "-m", "flows.cli", command, "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}, start_new_session=True)
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            started = _descendants(proc.pid)
            if any(running in c for c in started.values()):
                break
            time.sleep(0.2)
        grace = time.monotonic() + 10  # the server's guard starts right after it
        while time.monotonic() < grace and not any("stdin.buffer.read" in c for c in started.values()):
            time.sleep(0.2)
            started = _descendants(proc.pid)
        started = _descendants(proc.pid)
        assert any(running in c for c in started.values()), f"no {running} seen (exit {proc.poll()})"
        assert any("uvicorn" in c for c in started.values()), f"no Prefect server seen (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and set(started) & set(_processes()):
            time.sleep(0.2)
        alive = {pid: started[pid] for pid in set(started) & set(_processes())}
        assert not alive, f"survived kill -9 of sip: {alive}"
    finally:
        for pid in set(started) & set(_processes()):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- jobs whose result is a failure


def _sip_process(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)


@pytest.mark.slow
def test_a_corpus_with_no_chunk_is_an_error_with_the_counts(tmp_path):
    corpus = tmp_path / "short.jsonl"
    corpus.write_text("".join(f'{{"text": "{" ".join(["word"] * 60)} number {i}."}}\n' for i in range(3)))
    proc = _sip_process(tmp_path, "prepare", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                        "--set", f"data.source={corpus}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = _one_error(proc.stderr.splitlines(), "0 chunks from 3 documents", "shorter than")
    assert str(corpus) in error and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_failed_enforced_audit_gate_exits_1(tmp_path):
    from fake_openai import FakeOpenAI

    with FakeOpenAI(responder=lambda messages: "Both read fine.\nConclusion: Option 1") as srv:  # position bias 0.5
        proc = _sip_process(tmp_path, "audit-judge", "--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}",
                            "--set", "judge.backend=openai", "--set", "judge.model=fake",
                            "--set", f"judge.base_url={srv.base_url}", "--set", "judge.gate=enforce")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "audit-judge: FAILED gate" in proc.stdout
    _one_error(proc.stderr.splitlines(), "failed its audit (judge.gate=enforce)", "position")


@pytest.mark.slow
def test_pretrain_against_a_dead_judge_stops_in_one_line_and_commits_no_final(tmp_path):
    """Issue 14's first report: with the judge's endpoint refusing connections (and no audit to
    catch it, judge.gate=off) every step used to log loss NaN, exit 0 and commit an untrained
    final/. Now every failed judgment is skipped and counted, the run stops at the first step past
    pretrain.max_invalid_share, and nothing is committed as final."""
    run = tmp_path / "run"
    proc = _sip_process(tmp_path, "pretrain", "--config", SMOKE, "--set", f"run.root={run}",
                        "--set", "judge.backend=openai", "--set", "judge.model=fake",
                        "--set", "judge.base_url=http://127.0.0.1:9/v1", "--set", "judge.max_retries=0",
                        "--set", "judge.parse_retries=0", "--set", "judge.gate=off")
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = _one_error(proc.stderr.splitlines(), "pretrain.max_invalid_share", "skipped for failed")
    assert "Traceback" not in proc.stderr and "is the judge endpoint up" in error
    assert not list(run.glob("train/*/final")), "an untrained final/ was committed"


@pytest.mark.slow
def test_jobs_show_progress_with_counts_and_eta_in_compact_lines(tmp_path):
    """Issue 14 §6 end to end: prepare's stages, the judge audit, rewrite, thoughts and a recipe's
    steps each print count/total, elapsed and ETA lines; no console line is a metrics dump (the
    full per-step metrics go to metrics.parquet)."""
    import re

    root = ["--config", SMOKE, "--set", f"run.root={tmp_path / 'run'}"]
    runs = {"pretrain": _sip_process(tmp_path, "pretrain", *root),
            "rewrite": _sip_process(tmp_path, "rewrite", *root, "--limit", "2"),
            "thoughts": _sip_process(tmp_path, "thoughts", *root, "--limit", "2")}
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
    lines = {name: (p.stdout + p.stderr).splitlines() for name, p in runs.items()}
    progress = re.compile(r"(?P<what>[\w ()-]+?): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+), .*elapsed \S+, ETA \S+$")

    def seen(name: str, what: str, unit: str) -> list[tuple[int, int]]:
        found = [m for line in lines[name] if (m := progress.search(line))]
        return [(int(m["done"]), int(m["total"])) for m in found if m["what"].endswith(what) and m["unit"] == unit]

    assert seen("pretrain", "materialize-chunks", "shards")[-1] == (2, 2)
    assert seen("pretrain", "sample verdicts", "calls")[-1][0] > 0  # "judge audit: sample verdicts: n/n calls"
    assert seen("rewrite", "rewrite", "calls")[-1] == (2, 2)
    assert seen("thoughts", "thoughts (train)", "calls")[-1] == (2, 2)
    steps = [line for line in lines["pretrain"] if re.search(r"pretrain-dpo step \d+/2, loss ", line)]
    assert len(steps) == 2 and steps[-1].rstrip().endswith("ETA 0s")
    assert max(len(line) for line in lines["pretrain"]) < 300  # no 640-character JSON lines
    assert "pretrain (dpo)" in runs["pretrain"].stdout  # the summary names its objective
