-- Lineage database: one row per artifact manifest, one row per parent edge.
-- Every manifest is also stored whole (manifest_json) so the DB can rebuild any report.
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id   VARCHAR PRIMARY KEY,
    uri           VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,
    n_rows        BIGINT,
    config_hash   VARCHAR,
    code_version  VARCHAR,
    flow_run_id   VARCHAR,
    task_run_id   VARCHAR,
    part_of       VARCHAR,
    created_at    TIMESTAMPTZ,
    manifest_json JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS artifact_parents (
    artifact_id VARCHAR NOT NULL,
    parent_id   VARCHAR NOT NULL,
    PRIMARY KEY (artifact_id, parent_id)
);

CREATE INDEX IF NOT EXISTS artifacts_uri ON artifacts (uri);
