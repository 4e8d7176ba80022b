"""Build the backend a role's config asks for (imports stay lazy: torch only when needed)."""

from __future__ import annotations

from sip_core.config import LLMConfig
from sip_core.llm.types import LLMBackend, role_sampling


def make_backend(cfg: LLMConfig, api_key: str | None = None) -> LLMBackend:
    if cfg.backend == "openai":
        from sip_core.llm.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg, api_key=api_key)
    if cfg.backend == "local":
        from sip_core.llm.backends.local import LocalHFBackend

        return LocalHFBackend(cfg)
    from sip_core.llm.backends.proxy import ProxyJudgeBackend

    # model "none" turns off the proxy's small-LM likelihood term (lexical statistics only).
    return ProxyJudgeBackend(cfg, use_lm=cfg.model != "none")


def open_llm(cfg, role: str, provenance=None, api_key: str | None = None):
    """The cached runner for a role ("judge", "eval_judge", "rewriter", "teacher") of a SipConfig;
    the cache lives beside the lineage DB in the run's state (run.state)."""
    from sip_core.infra.artifacts import Provenance
    from sip_core.infra.run_context import RunContext
    from sip_core.llm.cache import CachedLLM

    cache = RunContext(cfg).judgment_cache()
    role_cfg = getattr(cfg, role)
    return CachedLLM(make_backend(role_cfg, api_key), cache, provenance or Provenance(),
                     sampling_overrides=role_sampling(role_cfg), max_failed_share=cfg.run.max_failed_share)
