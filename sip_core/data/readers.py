"""Source adapters: local JSONL / JSONL.gz / Parquet files (or a glob), and Hugging Face streaming.

Bad records are skipped and counted by reason (`non_utf8`, `malformed_json`, `missing_text`,
`empty_text`); a bad *source* (missing path, corrupt gzip) raises SourceError with one line.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sip_core.config import DataConfig
from sip_core.data.documents import Document
from sip_core.infra.paths import BUNDLED_SOURCES, find_data_dir


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "files" or "hf"
    files: tuple[str, ...] = ()
    hf_id: str | None = None
    hf_config: str | None = None

    def uris(self) -> list[str]:
        return list(self.files) if self.kind == "files" else [f"hf://datasets/{self.hf_id}/{self.hf_config or ''}"]


def resolve_source(cfg: DataConfig, storage_options: dict[str, Any] | None = None) -> ResolvedSource:
    if isinstance(cfg.source, list):
        return _resolve_list(cfg, storage_options)
    spec = cfg.source
    if spec.startswith("bundled:"):
        role = spec.split(":", 1)[1]
        if role not in BUNDLED_SOURCES:
            raise SourceError(f"data.source: unknown bundled source {spec!r}; known: "
                              + ", ".join(f"bundled:{r}" for r in BUNDLED_SOURCES))
        pattern, (hf_id, hf_config) = BUNDLED_SOURCES[role]
        data_dir = find_data_dir()
        if data_dir is None:  # a user's machine without the shared samples: stream the real thing
            return ResolvedSource("hf", hf_id=hf_id, hf_config=hf_config)
        spec = str(data_dir / pattern)
    # A path that exists here is read as a path (`mydata_folder` is not a Hub dataset id).
    looks_local = "://" in spec or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists() or any(
        spec.endswith(ext) for ext in (".jsonl", ".json", ".gz", ".parquet", "*"))
    if not looks_local:
        return ResolvedSource("hf", hf_id=spec, hf_config=cfg.hf_config)
    if "://" not in spec:
        spec = str(Path(spec).expanduser())
    fs, _ = fsspec.core.url_to_fs(spec, **(storage_options or {}))
    matches = sorted(fs.glob(fsspec.core.strip_protocol(spec)) if any(c in spec for c in "*?[") else
                     [p for p in [fsspec.core.strip_protocol(spec)] if fs.exists(p)])
    files = [f for m in matches for f in ([m] if fs.isfile(m) else _data_files(fs, m))]
    if not files:
        what = "no data file (.jsonl, .jsonl.gz, .json, .parquet) in" if matches else "no file matches"
        raise SourceError(f"data.source: {what} {cfg.source!r}")
    proto = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    return ResolvedSource("files", files=tuple(proto + f for f in files))


def _resolve_list(cfg: DataConfig, storage_options: dict[str, Any] | None) -> ResolvedSource:
    """Several sources as one corpus: their files in the order given. Only file sources combine
    (a Hub dataset streams on its own)."""
    if not cfg.source:
        raise SourceError("data.source: an empty list names no corpus")
    files: list[str] = []
    for spec in cfg.source:
        one = resolve_source(cfg.model_copy(update={"source": spec}), storage_options)
        if one.kind != "files":
            raise SourceError(f"data.source: {spec!r} in a list is a Hugging Face dataset here; a list combines "
                              "local files only (stream one Hub dataset, or download it first)")
        files += [f for f in one.files if f not in files]
    return ResolvedSource("files", files=tuple(files))


DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def _data_files(fs, folder: str) -> list[str]:
    """A folder source: the data files under it, in a stable order."""
    return sorted(f for f in fs.find(folder) if f.endswith(DATA_SUFFIXES))


def check_source(src: ResolvedSource, storage_options: dict[str, Any] | None = None) -> None:
    """Open every file of a local/remote source far enough to know it is what its name says (a
    Parquet footer, a gzip header), so a corrupt file fails before any stage runs, in one line.
    A Hub dataset is asked for once, quickly: unknown, private or unreachable is an error now."""
    if src.kind == "hf":
        _check_hf_dataset(src.hf_id)
    for uri in src.files:
        try:
            if uri.endswith(".parquet"):
                with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
                    pq.read_metadata(fh)
            elif uri.endswith(".gz"):
                with fsspec.open(uri, "rb", compression="gzip", **(storage_options or {})) as fh:
                    fh.read(1)
        except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
            kind = "Parquet" if uri.endswith(".parquet") else "gzip"
            raise SourceError(f"data.source: {uri} is not a readable {kind} file "
                              f"({next(iter(str(exc).splitlines()), type(exc).__name__)})") from None


def _check_hf_dataset(hf_id: str, timeout_s: float = 10.0) -> None:
    from huggingface_hub import constants, dataset_info
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return  # the datasets cache decides; streaming a Hub dataset offline fails there in one line
    try:
        dataset_info(hf_id, timeout=timeout_s)
    except RepositoryNotFoundError:
        raise SourceError(f"data.source: {hf_id!r} is neither a path here nor a dataset on the Hugging Face Hub "
                          "(or it is private: set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status is None or status < 500:
            raise SourceError(f"data.source: Hub dataset {hf_id!r}: HTTP {status}") from None
    except Exception as exc:  # noqa: BLE001 - no network: streaming could only hang in retries
        raise SourceError(f"data.source: {hf_id!r} is not a path here, and the Hugging Face Hub cannot be reached "
                          f"({type(exc).__name__}: {next(iter(str(exc).splitlines()), '')})") from None


def _doc_from_record(rec: Any, name: str, index: int, cfg: DataConfig, skips: Counter) -> Document | None:
    if not isinstance(rec, dict):
        skips["malformed_json"] += 1
        return None
    text = rec.get(cfg.text_field)
    if not isinstance(text, str):
        skips["missing_text"] += 1
        return None
    if not text.strip():
        skips["empty_text"] += 1
        return None
    try:
        text.encode("utf-8")  # a lone surrogate escape ("\ud800") is valid JSON but not storable text
    except UnicodeEncodeError:
        skips["invalid_unicode"] += 1
        return None
    raw_id = rec.get(cfg.id_field) if cfg.id_field else rec.get("id")
    # Without an id in the data, file name + record index is stable across runs and machines.
    doc_id = str(raw_id) if raw_id not in (None, "") else f"{name}#{index}"
    meta = {k: v for k, v in rec.items() if k != cfg.text_field}
    if "url" not in meta and isinstance(rec.get("id"), str) and rec["id"].startswith("http"):
        meta["url"] = rec["id"]
    return Document(id=doc_id, text=text, source=name, meta=meta)


def _iter_jsonl(uri: str, cfg: DataConfig, skips: Counter, storage_options: dict | None) -> Iterator[Document]:
    name = PurePosixPath(uri).name
    try:
        with fsspec.open(uri, "rb", compression="infer", **(storage_options or {})) as fh:
            for index, raw in enumerate(fh):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    skips["non_utf8"] += 1
                    continue
                except json.JSONDecodeError:
                    skips["malformed_json"] += 1
                    continue
                doc = _doc_from_record(rec, name, index, cfg, skips)
                if doc is not None:
                    yield doc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(f"data.source: {uri} is not a readable gzip file ({exc})") from None


def _iter_parquet(uri: str, cfg: DataConfig, skips: Counter, storage_options: dict | None) -> Iterator[Document]:
    name = PurePosixPath(uri).name
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
            index = 0
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    doc = _doc_from_record(rec, name, index, cfg, skips)
                    index += 1
                    if doc is not None:
                        yield doc
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"data.source: {uri} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _iter_hf(src: ResolvedSource, cfg: DataConfig, skips: Counter) -> Iterator[Document]:
    import datasets

    stream = datasets.load_dataset(src.hf_id, name=src.hf_config, split=cfg.hf_split, streaming=True)
    name = src.hf_id.split("/")[-1]
    for index, rec in enumerate(stream):
        doc = _doc_from_record(rec, name, index, cfg, skips)
        if doc is not None:
            yield doc


def iter_documents(src: ResolvedSource, cfg: DataConfig, skips: Counter,
                   storage_options: dict[str, Any] | None = None) -> Iterator[Document]:
    """Documents in a stable order, at most `cfg.max_docs` of them."""

    def every() -> Iterator[Document]:
        if src.kind == "hf":
            yield from _iter_hf(src, cfg, skips)
            return
        for uri in src.files:
            reader = _iter_parquet if uri.endswith(".parquet") else _iter_jsonl
            yield from reader(uri, cfg, skips, storage_options)

    for count, doc in enumerate(every()):
        if cfg.max_docs is not None and count >= cfg.max_docs:
            return
        yield doc
