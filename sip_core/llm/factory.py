"""Build the backend a role's config asks for (imports stay lazy: torch only when needed)."""

from __future__ import annotations

from sip_core.config import LLMConfig
from sip_core.llm.types import LLMBackend


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
    """The cached runner for a role ("judge", "rewriter", "teacher") of a SipConfig; the cache
    lives beside the lineage DB in the run's state dir."""
    from sip_core.infra.artifacts import Provenance
    from sip_core.llm.cache import CachedLLM, JudgmentCache
    from sip_core.infra.run_context import state_dir_for

    cache = JudgmentCache(state_dir_for(cfg.run.root, cfg.run.state_dir) / "judgments.duckdb")
    role_cfg = getattr(cfg, role)
    overrides = {"temperature": role_cfg.temperature, "top_p": role_cfg.top_p, "max_tokens": role_cfg.max_tokens}
    return CachedLLM(make_backend(role_cfg, api_key), cache, provenance or Provenance(), sampling_overrides=overrides)
