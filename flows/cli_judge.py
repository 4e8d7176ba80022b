"""`sip train-judge`: the judge-training command (picked up by flows/cli.py)."""

from __future__ import annotations

from pathlib import Path


def cmd_train_judge(args) -> int:
    from flows.cli import _preflight, _quiet_prefect_tracebacks
    from flows.train_judge import TrainJudgeParams, train_judge
    from sip_core.recipes.train_judge import check_init

    params = TrainJudgeParams(config_file=args.config, overrides=args.overrides, objective=args.objective,
                              init=args.init)
    cfg = params.load()
    check_init(cfg.judge_train.init, cfg)
    _preflight(cfg)
    _quiet_prefect_tracebacks()
    out = train_judge(params)["judge"]
    stats = out.stats
    print(f"train-judge: {stats.get('train_items')} items, validation accuracy {stats.get('before_all')} -> "
          f"{stats.get('after_all')} (first-option share {stats.get('before_first_option_share')} -> "
          f"{stats.get('after_first_option_share')}) -> {out.uri}{' (reused)' if out.reused else ''}")
    print(f"use it: --set judge.backend=local --set judge.model={out.uri}")
    return 0


def cmd_audit_trained_judge(args) -> int:
    """The trained judge against its base model on items from another corpus (no Prefect: a measurement)."""
    import json

    from sip_core.config import ConfigError, load_config
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks
    from sip_core.infra.models import load_tokenizer
    from sip_core.infra.run_context import RunContext
    from sip_core.judge import training_audit
    from sip_core.judge.corruptions import RULES
    from sip_core.recipes.train_judge import check_init, judge_card

    overrides = [*args.overrides, f"data.source={args.corpus}"]
    cfg = load_config(args.config, overrides)
    card = None
    if args.judge:
        check_init(args.judge, cfg)
        if (card := judge_card(args.judge)) is None:
            raise ConfigError(f"--judge {args.judge}: no sip_judge card in its config.json "
                              "(not a sip train-judge checkpoint)")
        cfg = cfg.replace({f"judge_train.{k}": card[k] for k in ("prefix_tokens", "option_tokens")})
    base = card["base_model"] if card else cfg.judge_train.init
    env = RunContext(cfg)
    chunks = materialize_chunks(env, filter_documents(env, ingest_documents(env)))
    items = training_audit.audit_items(chunks, cfg, load_tokenizer(args.judge or base, cfg.model.cache_dir),
                                       args.chunks)
    reports = {f"untrained ({base})": training_audit.cached_audit(base, items, cfg)}
    if args.judge:
        reports["trained"] = training_audit.cached_audit(args.judge, items, cfg)
    left_out = sorted(set(RULES) - set(card["rules"] if card else cfg.judge_train.rules))
    print(f"audit on {args.corpus} ({len(items)} items from {args.chunks} chunks of {chunks.uri}); "
          f"left out of training: {', '.join(left_out) or 'none'}")
    print(training_audit.markdown(reports, left_out))
    if args.out:
        Path(args.out).write_text(json.dumps({"corpus": args.corpus, "items": len(items), "judge": args.judge,
                                              "card": card, "left_out": left_out, "reports": reports}, indent=2))
    return 0


def add_commands(sub) -> None:
    from flows.cli import _command, arg

    _command(sub, "train-judge", "fine-tune a small judge on original-vs-corrupted items (METHOD §5.3)",
             cmd_train_judge, arg("--objective", choices=["sft", "grpo"], help="override judge_train.objective"),
             arg("--init", help="the judge's base model: a model ref or checkpoint folder (judge_train.init)"))
    _command(sub, "audit-trained-judge", "a trained judge vs its base model on items from another corpus",
             cmd_audit_trained_judge, arg("--judge", help="a sip train-judge checkpoint folder (absent: only the "
                                                     "base model judge_train.init, with the config's cuts)"),
             arg("--corpus", default="bundled:redpajama", help="data.source of the audit items (not the training one)"),
             arg("--chunks", type=int, default=30, help="chunks of that corpus turned into items"),
             arg("--out", help="also write the reports as JSON here"))
