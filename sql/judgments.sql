-- Judgment cache: one row per (model, prompt@version, rendered messages, sampling, seed) key.
-- Rows with status 'error' record a final failure; a rerun asks again for those keys only.
CREATE TABLE IF NOT EXISTS judgments (
    key               VARCHAR PRIMARY KEY,
    model_id          VARCHAR NOT NULL,
    prompt            VARCHAR NOT NULL,      -- name@version
    messages_json     JSON NOT NULL,
    sampling_json     JSON NOT NULL,
    seed              BIGINT,
    raw_output        VARCHAR,
    parsed_json       JSON,
    status            VARCHAR NOT NULL,      -- ok | unparseable | error
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

-- Per-process counters of lookups, so `sip cache stats` can report hits and misses.
CREATE TABLE IF NOT EXISTS cache_lookups (
    prompt     VARCHAR NOT NULL,
    model_id   VARCHAR NOT NULL,
    hits       BIGINT NOT NULL,
    misses     BIGINT NOT NULL,
    looked_at  TIMESTAMPTZ NOT NULL
);
