-- sql/lineage.sql for a DuckLake store (no primary keys or indexes there; see lake_judgments.sql).
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id   VARCHAR NOT NULL,
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
    parent_id   VARCHAR NOT NULL
);
