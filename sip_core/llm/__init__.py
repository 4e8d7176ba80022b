"""One way to call a model: requests, results, backends (openai, local, proxy), the DuckDB cache."""
