"""The cassette file: the recorded answers of an experiment's hosted calls (``workbench cassette
export``), replayed offline by ``workbench run EXP --replay FILE``.

One JSON document (``.json``, or gzip-compressed ``.json.gz``), validated by pydantic like every
file the workbench reads. Each entry is one request and its answer, keyed by provider, model,
endpoint and the hash of the request's content (``providers/recording.py`` computes the key).
What an entry never holds: a request header (the API key travels there), a query parameter other
than Azure's ``api-version``, or a response header other than ``content-type`` and
``retry-after``; key values echoed back in a body are masked before anything is written.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from ..errors import ConfigError
from .yamlfile import StrictModel

CASSETTE_FORMAT = "workbench-cassette"
CASSETTE_VERSION = 1


class RecordedResponse(StrictModel):
    """What the endpoint answered: status, the allowed headers and the body; or, when no answer
    came (a timeout, a dropped connection), the transport error that was raised."""

    status: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    error: str | None = None  # "ReadTimeout: ..." when the request got no answer


class CassetteEntry(StrictModel):
    """One hosted request and its answer. Embedding requests are kept one input text per entry, so a
    replay does not depend on how texts were batched (which depends on what the embedding cache held)."""

    key: str = Field(pattern=r"^[0-9a-f]{32}$")
    role: str  # generation, judge, fallback, embedding, rerank
    provider: str
    model: str
    endpoint: str  # "POST https://host/v1/chat/completions" (Azure: with ?api-version=...)
    request_hash: str
    request: Any  # the request's JSON body (or its text), secrets masked: what was asked, for people
    response: RecordedResponse


class Cassette(StrictModel):
    format: Literal["workbench-cassette"] = CASSETTE_FORMAT
    version: Literal[1] = CASSETTE_VERSION
    experiment: str
    created_at: str
    runs: list[str] = Field(default_factory=list)
    entries: list[CassetteEntry] = Field(default_factory=list)

    def by_key(self) -> dict[str, CassetteEntry]:
        return {e.key: e for e in self.entries}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_cassette(path: str | os.PathLike) -> Cassette:
    """Read and validate a cassette; any problem is one ``ConfigError`` line naming the file (and field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: cassette not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a cassette ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != CASSETTE_FORMAT:
        raise ConfigError(f"{path}: not a cassette (expected format {CASSETTE_FORMAT!r}; write one with `workbench cassette export`)")
    try:
        return Cassette.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {_loc(err['loc'])}: {err['msg']}") from None


def write_cassette(cassette: Cassette, path: str | os.PathLike) -> Path:
    """Write atomically (a temporary file renamed), gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cassette.model_dump(mode="json"), ensure_ascii=False, indent=1, sort_keys=False)
    data = gzip.compress(text.encode("utf-8"), mtime=0) if path.name.endswith(".gz") else text.encode("utf-8")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
