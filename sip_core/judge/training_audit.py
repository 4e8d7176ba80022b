"""Audit a trained judge against its base model on items from a corpus it was never trained on.

The items are built exactly as training items are (sip_core.judge.training_items: the same cuts,
both option orders, the same safety labels), but from every chunk of another corpus's chunk
artifact and with every corruption rule, so rules left out of training are measured too. Both
judges read the same compact prompts and are scored the same way (the two verdicts' first-token
probabilities, as `verdict: probs` reads them): the only difference is the training.

Reported per judge: accuracy overall, per rule and per dimension, the first-option share of pair
verdicts, order consistency (both orders of a pair pick the same text), and the gate the judge
audit enforces (per-dimension accuracy >= judge.gate_min_accuracy, first-option share within
0.5 ± judge.gate_max_position_bias).
"""

from __future__ import annotations

from collections import defaultdict

from sip_core.config import SipConfig
from sip_core.evaluation.stats import wilson_interval
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest
from sip_core.judge import training_items
from sip_core.judge.corruptions import RULES


REPORT_FORMAT = 2  # 2: reports carry `counts` (items per measure); older cached reports are recomputed


def audit_items(chunks: Manifest, cfg: SipConfig, tokenizer, n_chunks: int) -> list[dict]:
    """Items of the first `n_chunks` chunks (both splits) of `chunks`, every rule, the judge's cuts."""
    jc, so = cfg.judge_train, cfg.run.storage_options
    cut = training_items.Cut(tokenizer, jc.prefix_tokens, jc.option_tokens)
    words = training_items.badwords(cfg.filter)
    rows = [r for f in artifacts.shard_uris(chunks) if f.endswith(".parquet")
            for r in store.read_parquet(f, so, columns=training_items.CHUNK_COLUMNS).to_pylist()][:n_chunks]
    return [item for row in rows for item in
            training_items.items_of_chunk(row, cut, sorted(RULES), jc.safety_items, cfg.data.seed, words, "audit")]


def order_consistency(encoded, probs) -> dict[str, float]:
    """Per dimension: share of pairs whose two orders pick the same text."""
    right: dict[tuple, list[bool]] = defaultdict(list)
    for e, p in zip(encoded, probs):
        if e.item["kind"] == "pair":
            right[(e.item["chunk_id"], e.item["rule"], e.item["dimension"])].append(p > 0.5)
    by_dim: dict[str, list[float]] = defaultdict(list)
    for (_, _, dim), outcomes in right.items():
        if len(outcomes) == 2:
            by_dim[dim].append(float(outcomes[0] == outcomes[1]))
    return {f"order_consistency/{d}": round(sum(v) / len(v), 4) for d, v in sorted(by_dim.items())}


def gate(report: dict, cfg: SipConfig) -> list[str]:
    """Why the judge audit's gate would refuse this judge (empty: it passes)."""
    jcfg, reasons = cfg.judge, []
    for key, value in report.items():
        if key.startswith("dimension/") and value < jcfg.gate_min_accuracy:
            reasons.append(f"{key.split('/', 1)[1]} accuracy {value} < {jcfg.gate_min_accuracy}")
    share = report.get("first_option_share")
    if share is not None and abs(share - 0.5) > jcfg.gate_max_position_bias:
        reasons.append(f"first-option share {share} outside 0.5 ± {jcfg.gate_max_position_bias}")
    return reasons


def audit_judge_model(ref: str, items: list[dict], cfg: SipConfig, batch_size: int = 8) -> dict:
    """The audit report of one judge model (a model ref or checkpoint folder) on `items`."""
    import torch

    from sip_core.infra.models import autocast_dtype, load_causal_lm, resolve_device
    from sip_core.llm.prompting import load_prompt
    from sip_core.recipes.train_judge import Encoded, accuracy_by, verdict_probs

    jc = cfg.judge_train
    device = resolve_device(jc.device)
    model, tok = load_causal_lm(ref, device, cfg.model.cache_dir)
    prompts = {"pair": load_prompt(jc.quality_prompt), "point": load_prompt(jc.safety_prompt)}
    encoded = [Encoded(item, prompts, tok) for item in items]
    dtype = autocast_dtype(jc.precision, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        probs = verdict_probs(model, encoded, tok.pad_token_id, device, batch_size)
    report = {**accuracy_by(encoded, probs), **order_consistency(encoded, probs)}
    report["gate_reasons"] = gate(report, cfg)
    report["gate"] = "passed" if not report["gate_reasons"] else "FAILED"
    return report


def _fingerprint(folder: str) -> str:
    """A model folder's identity: a new checkpoint in the same place is a new model."""
    from pathlib import Path

    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(Path(folder).glob("*.safetensors"))]
    return artifacts.json_digest([folder, parts])


def cached_audit(ref: str, items: list[dict], cfg: SipConfig) -> dict:
    """`audit_judge_model`, stored under <run.root>/judge-audits/ by (model files, items, prompts,
    precision): the base model's column is computed once, whichever judge it is compared with."""
    from sip_core.infra.models import resolve_model

    jc, so = cfg.judge_train, cfg.run.storage_options
    key = artifacts.json_digest([REPORT_FORMAT, _fingerprint(resolve_model(ref, cfg.model.cache_dir)), items,
                                 jc.quality_prompt, jc.safety_prompt, jc.precision])[:16]
    uri = store.join(store.normalize(cfg.run.root), "judge-audits", f"{key}.json")
    if store.exists(uri, so):
        return store.read_json(uri, so)
    report = audit_judge_model(ref, items, cfg)
    store.write_json(uri, report, so)
    return report


def trained_rules_accuracy(report: dict, left_out: list[str]) -> tuple[float, int] | None:
    """Accuracy pooled over the pairwise rules the judge was trained on (left-out rules and the
    pointwise safety items excluded), with its item count; None for a report without counts."""
    counts = report.get("counts") or {}
    keys = [k for k in counts if k.startswith("rule/") and ":" not in k and k.split("/", 1)[1] not in left_out]
    n = sum(counts[k] for k in keys)
    return (sum(report[k] * counts[k] for k in keys) / n, n) if n else None


def _cell(report: dict, key: str) -> str:
    """A measure with its 95% Wilson interval and n where the report counts its items."""
    value, n = report.get(key), (report.get("counts") or {}).get(key)
    if not isinstance(value, float | int) or isinstance(value, bool) or not n:
        return "" if value is None else str(value)
    iv = wilson_interval(value * n, n)
    return f"{value:.3f} [{iv.low:.2f}, {iv.high:.2f}] n={n}"


def markdown(reports: dict[str, dict], left_out: list[str]) -> str:
    """One table: a row per measure (value, 95% Wilson interval, n), a column per judge; rules
    left out of training are marked, and a pooled row gives accuracy on the trained rules."""
    names = list(reports)
    reports = {name: dict(r) for name, r in reports.items()}
    for r in reports.values():
        if (pooled := trained_rules_accuracy(r, left_out)) is not None:
            r["trained rules (pairs)"] = round(pooled[0], 4)
            r["counts"] = {**r["counts"], "trained rules (pairs)": pooled[1]}
    keys = sorted({k for r in reports.values() for k in r if k not in ("gate", "gate_reasons", "counts")},
                  key=lambda k: (k.split("/")[0] != "all", not k.startswith("trained"), k))
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        rule = key.split("/", 1)[1].split(":")[0] if key.startswith("rule/") else None
        label = key + (" (left out of training)" if rule in left_out else "")
        lines.append(f"| {label} | " + " | ".join(_cell(reports[n], key) for n in names) + " |")
    lines.append("| gate | " + " | ".join(f"{r['gate']}" + (f": {'; '.join(r['gate_reasons'])}"
                                                               if r["gate_reasons"] else "")
                                          for r in reports.values()) + " |")
    return "\n".join(lines)
