"""Training library: log-probs, losses, rollout engines, checkpoints, data order, runtime.

Recipes (one file per method, `sip_core/recipes/`) compose these; nothing here imports Prefect.
"""


class RecipeFailed(RuntimeError):
    """A recipe subprocess ended without a final checkpoint; the message is its last line."""


class JudgeGateFailed(RuntimeError):
    """judge.gate=enforce and the judge failed its audit."""
