"""Content hashes: the identity of every input and stage output.

Run ids, cache keys and Chroma collection names are all hashes of canonical JSON, so the same
inputs always give the same ids on any machine, and a changed input never reuses a stale result.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import diskcache


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the one serialisation every hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_obj(obj: Any, length: int = 64) -> str:
    """sha256 of the canonical JSON of ``obj``, truncated to ``length`` hex digits."""
    return sha256_text(canonical_json(obj))[:length]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, memo: diskcache.Cache | None = None) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) in memory and optionally on disk.

    Model files are ~100 MB; hashing one takes ~0.3 s, so the digest is remembered for as long as
    the file's size and modification time do not change.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    disk_key = "file_sha256:" + canonical_json(key)
    digest = memo.get(disk_key) if memo is not None else None
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if memo is not None:
            memo.set(disk_key, digest)
    _FILE_HASHES[key] = digest
    return digest


def tree_sha256(root: str | os.PathLike, memo: diskcache.Cache | None = None) -> str:
    """Hash of a folder: every file's relative path and content hash, in sorted order."""
    root = Path(root)
    entries = [
        (str(p.relative_to(root)), file_sha256(p, memo))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    return hash_obj(entries)
