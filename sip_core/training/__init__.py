"""Training library: log-probs, losses, rollout engines, checkpoints, data order, runtime.

Recipes (one file per method, `sip_core/recipes/`) compose these; nothing here imports Prefect.
"""
