-- sql/judgments.sql for a DuckLake store: DuckLake has no primary keys or indexes, so uniqueness of
-- `key` comes from the serialized insert-if-absent writes (sip_core/infra/state.py), not a constraint.
CREATE TABLE IF NOT EXISTS judgments (
    key               VARCHAR NOT NULL,
    model_id          VARCHAR NOT NULL,
    prompt            VARCHAR NOT NULL,
    messages_json     JSON NOT NULL,
    sampling_json     JSON NOT NULL,
    seed              BIGINT,
    raw_output        VARCHAR,
    parsed_json       JSON,
    status            VARCHAR NOT NULL,
    parse_error       VARCHAR,
    error             VARCHAR,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_s         DOUBLE,
    attempts          INTEGER,
    created_at        TIMESTAMPTZ NOT NULL,
    flow_run_id       VARCHAR,
    task_run_id       VARCHAR
);

CREATE TABLE IF NOT EXISTS cache_lookups (
    prompt     VARCHAR NOT NULL,
    model_id   VARCHAR NOT NULL,
    hits       BIGINT NOT NULL,
    misses     BIGINT NOT NULL,
    looked_at  TIMESTAMPTZ NOT NULL
);
