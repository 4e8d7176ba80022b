"""Where the bundled data and local state live.

The shared data folder is read in place, never copied into the project: `$SIP_DATA_DIR`, else a
`shared/data` beside the checkout (or beside any parent of the working directory). Where none is
found (a user's machine) the bundled roles fall back to Hugging Face streaming.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Role -> (local path under the data dir, Hub fallback: dataset id, config, text field).
BUNDLED_SOURCES = {
    "c4": ("corpus/c4_sample/*.json.gz", ("HuggingFaceFW/fineweb-edu", "sample-10BT")),
    "redpajama": ("corpus/redpajama_ccnet_sample/*.jsonl", ("togethercomputer/RedPajama-Data-V2", "sample")),
}


def find_data_dir() -> Path | None:
    env = os.environ.get("SIP_DATA_DIR")
    if env:
        return Path(env)
    starts = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for base in [start, *start.parents]:
            candidate = base / "shared" / "data"
            if (candidate / "corpus").is_dir():
                return candidate
    return None


def default_data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        raise FileNotFoundError("bundled data not found: set SIP_DATA_DIR or place shared/data beside the checkout")
    return found


def cache_home() -> Path:
    return Path(os.environ.get("SIP_CACHE_DIR", Path.home() / ".cache" / "sip"))


def state_dir_for(root: str, configured: str | None) -> Path:
    """Local home of the DuckDB files. DuckDB wants a local file, so a remote root gets a
    per-root folder under the cache (documented in docs/running-at-scale.md, section 5)."""
    if configured:
        path = Path(configured)
    elif "://" not in root or root.startswith("file://"):
        path = Path(root.removeprefix("file://")) / "_state"
    else:
        path = cache_home() / "state" / hashlib.sha256(root.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path
