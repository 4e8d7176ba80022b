"""Training library: the recipe skeleton (recipe.py) and session, pretraining's objectives and
judged pairs, log-probs, losses, rollout engines, the thought format, checkpoints, data order,
runtime.

Recipes (one file per method, `sip_core/recipes/`) compose these; nothing here imports Prefect or
the data stage (recipes take its artifacts as inputs).
"""


class RecipeFailed(RuntimeError):
    """A recipe subprocess ended without a final checkpoint; the message is its last line."""


class JudgeGateFailed(RuntimeError):
    """judge.gate=enforce and the judge failed its audit."""
