-- One row per store: the schema version that wrote it (a newer one is refused, never guessed at),
-- and the write-turn counter. On a shared DuckLake store every batch write also bumps write_turns;
-- two writers that overlap therefore conflict at commit, and the later one retries against what
-- the first committed (insert-if-absent stays exact under optimistic concurrency).
CREATE TABLE IF NOT EXISTS sip_state (
    schema_version INTEGER NOT NULL,
    write_turns    BIGINT NOT NULL,
    created_by     VARCHAR
);
