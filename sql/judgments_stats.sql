-- `sip cache stats`: per prompt version and model, stored rows by status, tokens, lookups.
WITH stored AS (
    SELECT prompt, model_id,
           count(*)                                   AS stored,
           count(*) FILTER (WHERE status = 'ok')          AS ok,
           count(*) FILTER (WHERE status = 'unparseable') AS parse_failures,
           count(*) FILTER (WHERE status = 'error')       AS errors,
           coalesce(sum(prompt_tokens), 0)            AS prompt_tokens,
           coalesce(sum(completion_tokens), 0)        AS completion_tokens,
           round(avg(latency_s), 3)                   AS mean_latency_s
    FROM judgments GROUP BY ALL
), looked AS (
    SELECT prompt, model_id, sum(hits) AS hits, sum(misses) AS misses FROM cache_lookups GROUP BY ALL
)
SELECT s.prompt, s.model_id, coalesce(l.hits, 0) AS hits, coalesce(l.misses, 0) AS misses,
       s.stored, s.ok, s.parse_failures, s.errors, s.prompt_tokens, s.completion_tokens, s.mean_latency_s
FROM stored s LEFT JOIN looked l USING (prompt, model_id)
ORDER BY s.prompt, s.model_id;
