"""`sip train-rewriter`: the rewriter-training command (picked up by flows/cli.py)."""

from __future__ import annotations

BEFORE_AFTER = ("copies_safe", "copy_rate_safe", "unparseable_safe", "unparseable_unsafe", "judged_unsafe",
                "judged_safety_unsafe", "judged_quality_unsafe")


def cmd_train_rewriter(args) -> int:
    from flows.cli import _preflight, _preflight_judges, _quiet_prefect_tracebacks
    from flows.train_rewriter import TrainRewriterParams, train_rewriter

    params = TrainRewriterParams(config_file=args.config, overrides=args.overrides, init=args.init)
    cfg = params.load()
    _preflight(cfg)
    _preflight_judges(cfg, ("judge", "eval_judge"))
    from flows._lifeline import install

    install()  # the temporary Prefect server ends with this process, even after kill -9
    _quiet_prefect_tracebacks()
    out = train_rewriter(params)["rewriter"]
    stats = out.stats
    changes = ", ".join(f"{k} {stats.get('before_' + k)} -> {stats.get('after_' + k)}" for k in BEFORE_AFTER)
    print(f"train-rewriter: {stats.get('train_rows')} train suffixes, {stats.get('updates')} updates; held-out "
          f"({stats.get('before_safe_rows')} safe, {stats.get('before_unsafe_rows')} unsafe, judged by "
          f"{stats.get('validation_judge')}): {changes}")
    if stats.get("validation_circular"):
        print("train-rewriter: the judged numbers come from the training judge (eval_judge is the judge): "
              "circular, no verdict on whether the rewriter improved")
    print(f"use it: --set rewriter.backend=local --set rewriter.model={out.uri}")
    return 0


def add_commands(sub) -> None:
    from flows.cli import _command, arg

    _command(sub, "train-rewriter", "train the suffix rewriter with GRPO (METHOD §5.4)", cmd_train_rewriter,
             arg("--init", help="the rewriter's base model: a model ref or checkpoint folder (rewriter_train.init)"))
