"""Which judge trains and which judge grades, and whether the grading is circular.

A comparison of trained models is circular when the judge that grades them is the judge that
trained them (the models were optimised for exactly its preferences), or when any judge scores
with the policy or the DPO reference itself (the judge then prefers what the model already finds
likely). `judge_roles` says which judges a config uses and, when the comparison is circular, why;
the report prints no "X beats Y" verdict then.

Models are compared by identity, not by spelling: a bundled ref, its Hub id and the name vLLM
serves it under are one model; a local folder is its resolved path.
"""

from __future__ import annotations

import os
from typing import Any

BUNDLED_ALIASES = {"bundled:smollm2-135m-instruct": "smollm2-135m-instruct"}


def model_key(ref: str | None) -> str | None:
    """A comparable identity for a model reference (None for none/empty)."""
    if not ref or ref == "none":
        return None
    ref = str(ref).strip()
    if ref in BUNDLED_ALIASES:
        return BUNDLED_ALIASES[ref]
    if "://" in ref:
        return ref.rstrip("/")
    if ref.startswith(("/", ".", "~")) or os.path.exists(ref):
        return os.path.realpath(os.path.expanduser(ref))
    return ref.rsplit("/", 1)[-1].lower()  # a Hub id or a served name: org/Name -> name


def scoring_model(role_cfg) -> str | None:
    """The model whose outputs decide a judge's verdicts: the proxy's scoring LM (None: lexical
    statistics only), or the judge model itself."""
    return None if role_cfg.backend == "proxy" and role_cfg.model == "none" else role_cfg.model


def judge_identity(role_cfg) -> tuple[str, str | None]:
    """Two judges are the same judge when this is equal (a model served by vLLM and the same
    folder loaded locally are one judge; the lexical proxy is one judge)."""
    if role_cfg.backend == "proxy":
        return ("proxy", model_key(role_cfg.model) or "none")
    return ("model", model_key(role_cfg.model))


def trained_models(cfg) -> dict[str, str]:
    """What the recipes train from or against, by what it is: a judge must score with none of them."""
    out = {"the policy (model.policy)": cfg.model.policy,
           "the DPO reference (pretrain.init)": cfg.pretrain.init or cfg.model.policy}
    for name in ("sft", "rlmt"):
        if init := getattr(cfg, name).init:
            out[f"a policy init ({name}.init)"] = init
    return out


def policy_conflicts(role: str, role_cfg, cfg) -> list[str]:
    """Why a judge role's scoring model is a model being trained (empty: it is none of them)."""
    key = model_key(scoring_model(role_cfg))
    if key is None:
        return []
    what = "scoring LM" if role_cfg.backend == "proxy" else "model"
    return [f"{role}'s {what} {role_cfg.model} is {name}" for name, ref in trained_models(cfg).items()
            if model_key(ref) == key]


def describe(role_cfg) -> dict[str, Any]:
    """backend, model and the verdict mode in effect (a trained judge's card decides when unset)."""
    from sip_core.judge.spec import judge_spec

    return {"backend": role_cfg.backend, "model": role_cfg.model, "verdict": judge_spec(role_cfg).verdict}


def judge_roles(cfg) -> dict[str, Any]:
    """{"training": {backend, model, verdict}, "evaluation": {...}, "circular": bool, "reasons": [...]}."""
    train, evaluation = cfg.judge, cfg.eval_judge
    reasons = []
    if judge_identity(train) == judge_identity(evaluation):
        reasons.append(f"the evaluation judge is the training judge ({evaluation.backend}: {evaluation.model})")
    reasons += policy_conflicts("judge", train, cfg) + policy_conflicts("eval_judge", evaluation, cfg)
    return {"training": describe(train), "evaluation": describe(evaluation), "circular": bool(reasons),
            "reasons": reasons}


def as_training_judge(cfg, role: str):
    """`cfg` with `role`'s judge in the training judge's place: what the audit (which audits
    `cfg.judge`) runs on to audit the evaluation judge."""
    return cfg if role == "judge" else cfg.replace({"judge": getattr(cfg, role).model_dump(mode="json")})


def training_dimensions(cfg) -> list[str]:
    """The audited dimensions the training judge's role uses: what SIP's score sums
    (judge.criteria) and, with filter stage 2, safety. Its gate enforces these; a dimension no
    training step asks about is reported, not gated."""
    return sorted(set(cfg.judge.criteria) | ({"safety"} if cfg.filter.llm_stage else set()))
