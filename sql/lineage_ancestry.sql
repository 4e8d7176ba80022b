-- Ancestry of the newest artifact at a URI. A shard steps to its dataset (part_of) and every
-- artifact to its parents, until the sources. UNION (not UNION ALL) stops on any cycle.
WITH RECURSIVE
edges AS (
    SELECT artifact_id, parent_id FROM artifact_parents
    UNION
    SELECT artifact_id, part_of FROM artifacts WHERE part_of IS NOT NULL
),
walk(artifact_id, depth) AS (
    SELECT artifact_id, 0 FROM (
        SELECT artifact_id FROM artifacts WHERE uri = $uri ORDER BY created_at DESC LIMIT 1)
    UNION
    SELECT e.parent_id, w.depth + 1
    FROM walk w JOIN edges e ON e.artifact_id = w.artifact_id
    WHERE w.depth < 64
)
SELECT MIN(w.depth) AS depth, a.artifact_id, a.kind, a.uri, a.n_rows, a.config_hash, a.code_version,
       a.flow_run_id, a.task_run_id, a.created_at, a.manifest_json
FROM walk w JOIN artifacts a USING (artifact_id)
GROUP BY ALL
ORDER BY depth, a.uri;
