"""Record and replay every hosted call at the HTTP layer.

Every client of a hosted model (generation, judge, fallback, hosted and Azure embeddings, the LLM
reranker, a ``/rerank`` API) is made with an ``httpx.Client`` from :class:`HostedHttp`, which the
run's ``Components`` own. Its transport is one of:

* **recording** (the default): the request goes to the provider; the answer streams back to the
  caller as it arrives (time to first token is unchanged) and, once complete, is written to the
  *recordings* in the cache folder (``<cache>/recordings``, a diskcache), keyed by
  :func:`request_key` = provider, model, endpoint and the hash of the request's content. A later
  ``workbench cassette export`` reads them from there (see ``pipeline/replay.py``);
* **replaying** a cassette (``workbench run --replay FILE``): the answer comes from the file; a
  request that is not in it is, in strict mode, a :class:`CassetteMiss` that stops the run with one
  line naming the request (without strict mode it goes to the provider and is recorded).

What is kept: a request's JSON body (it is the request's identity, and what a reviewer wants to
see) and the response's status, body, ``content-type`` and ``retry-after``. What is never kept:
request headers (the API key travels in ``Authorization`` / ``api-key``), query parameters other
than Azure's ``api-version``, other response headers; a key value that a server echoes in a body is
masked (``***``) before anything is written.

Embedding requests are split into one entry per input text, because which texts reach the
endpoint in one batch depends on what the embedding cache already held: per text, a replay finds
every vector however the texts are batched. Answers that failed (429, 5xx, a timeout) are recorded
too, so a replay fails the same questions the same way; they never overwrite a success.

Why not VCR.py (``vcrpy``): it patches httpx globally (every thread and client of the process), it
keeps request headers unless each one is filtered by name, matches whole request bodies (so batch
composition matters) and keeps one cassette per test rather than a content-addressed store that
several runs and experiments share. An ``httpx`` transport is the documented seam for exactly this.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import diskcache
import httpx
import numpy as np

from ..config.cassette import CassetteEntry, RecordedResponse, load_cassette
from ..errors import ProviderError
from ..hashing import hash_obj

KEPT_RESPONSE_HEADERS = ("content-type", "retry-after")
KEPT_QUERY = ("api-version",)
AUTH_HEADERS = ("authorization", "api-key", "x-api-key")
MASK = "***"


class CassetteMiss(BaseException):  # noqa: N818 - a signal, not an error a handler should swallow
    """A request that the cassette does not hold, in strict replay.

    A ``BaseException`` on purpose (like ``KeyboardInterrupt``): the ``openai`` client turns every
    ``Exception`` raised by its transport into a retried connection error, and the run core stores a
    failed call as a failed row. A missing recording is neither: it must stop the run.
    """


class ReplayError(ProviderError):
    """A strict replay met a request its cassette does not hold (one line, naming the request)."""


@contextlib.contextmanager
def misses_as_errors(hint: str = "") -> Iterator[None]:
    """Turn a :class:`CassetteMiss` raised anywhere inside into a one-line :class:`ReplayError`."""
    try:
        yield
    except CassetteMiss as miss:
        raise ReplayError(f"{miss}{hint}") from None


@dataclass(frozen=True)
class Labels:
    """Who makes the calls of one client: its role in the run, the provider and the model."""

    role: str
    provider: str
    model: str


@dataclass(frozen=True)
class Item:
    """One recordable unit of a request: the whole request, or one input of an embedding batch."""

    key: str
    request_hash: str
    request: object
    index: int | None = None  # the input's position in an embedding batch


def request_key(provider: str, model: str, endpoint: str, request_hash: str) -> str:
    """The identity of a recorded request: provider, model, endpoint and the request's content hash.
    Two models asked the same prompt are two keys; so are two endpoints serving the same model."""
    return hash_obj([provider, model, endpoint, request_hash], 32)


def endpoint_of(request: httpx.Request) -> str:
    """``METHOD scheme://host[:port]/path``, with Azure's ``api-version`` and no other query parameter."""
    url = request.url
    port = f":{url.port}" if url.port else ""
    query = [(k, v) for k, v in url.params.multi_items() if k in KEPT_QUERY]
    return f"{request.method} {url.scheme}://{url.host}{port}{url.path}" + (f"?{urlencode(query)}" if query else "")


def secrets_of(request: httpx.Request) -> list[str]:
    """The credential values a request carries in its headers (to mask wherever they are echoed)."""
    out = []
    for name in AUTH_HEADERS:
        value = request.headers.get(name)
        if value and name == "authorization" and " " in value:
            value = value.split(" ", 1)[1]
        if value and len(value) >= 4:
            out.append(value)
    return out


def mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def is_embedding_batch(endpoint: str, body: object) -> bool:
    return (endpoint.split("?")[0].endswith("/embeddings") and isinstance(body, dict) and isinstance(body.get("input"), list)
            and all(isinstance(t, str) for t in body["input"]))


def split_request(labels: Labels, request: httpx.Request, secrets: list[str]) -> tuple[str, list[Item]]:
    """The request's endpoint and its items (one, or one per input text of an embedding batch)."""
    endpoint = endpoint_of(request)
    text = mask(request.read().decode("utf-8", errors="replace"), secrets)
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None

    def item(content: object, index: int | None = None) -> Item:
        digest = hash_obj(content) if body is not None else hashlib.sha256(text.encode("utf-8")).hexdigest()
        return Item(request_key(labels.provider, labels.model, endpoint, digest), digest, content, index)

    if is_embedding_batch(endpoint, body):
        common = {k: v for k, v in body.items() if k not in ("input", "encoding_format")}  # the format is converted on replay
        return endpoint, [item({**common, "input": t}, i) for i, t in enumerate(body["input"])]
    return endpoint, [item(body if body is not None else text)]


def recorded_response(status: int, headers: httpx.Headers, body: bytes, secrets: list[str]) -> RecordedResponse:
    kept = {k: headers[k] for k in KEPT_RESPONSE_HEADERS if k in headers}
    try:
        return RecordedResponse(status=status, headers=kept, body=mask(body.decode("utf-8"), secrets))
    except UnicodeDecodeError:
        return RecordedResponse(status=status, headers=kept, body=base64.b64encode(body).decode("ascii"), body_encoding="base64")


def response_bytes(response: RecordedResponse) -> bytes:
    return base64.b64decode(response.body) if response.body_encoding == "base64" else response.body.encode("utf-8")


def _ok(response: RecordedResponse) -> bool:
    return response.error is None and response.status is not None and 200 <= response.status < 300


class Recordings:
    """The recordings of a cache folder: ``<cache>/recordings``, one entry per request key. Shared
    by every run and process that uses the folder (diskcache is safe across both)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.cache = diskcache.Cache(str(self.folder))

    def close(self) -> None:
        self.cache.close()

    def get(self, key: str) -> CassetteEntry | None:
        found = self.cache.get(f"rec:{key}")
        return CassetteEntry.model_validate(found) if found is not None else None

    def put(self, labels: Labels, endpoint: str, items: list[Item], responses: list[RecordedResponse]) -> None:
        """Keep each item's answer; a failed answer never replaces a recorded success."""
        with self.cache.transact():
            for it, resp in zip(items, responses):
                old = self.cache.get(f"rec:{it.key}")
                if old is not None and not _ok(resp) and _ok(RecordedResponse.model_validate(old["response"])):
                    continue
                entry = CassetteEntry(key=it.key, role=labels.role, provider=labels.provider, model=labels.model, endpoint=endpoint,
                                      request_hash=it.request_hash, request=it.request, response=resp)
                self.cache.set(f"rec:{it.key}", entry.model_dump(mode="json"))


def split_embedding_response(items: list[Item], resp: RecordedResponse) -> list[RecordedResponse]:
    """One response per input of an embedding batch: ``{"object": "embedding", "embedding": ..., "index": 0}``."""
    if not _ok(resp):
        return [resp] * len(items)
    data = {d["index"]: d for d in json.loads(response_bytes(resp))["data"]}
    return [resp.model_copy(update={"body": json.dumps({**data[it.index], "index": 0}), "body_encoding": "utf-8"}) for it in items]


class _TeeStream(httpx.SyncByteStream):
    """Passes a response body through as it arrives and hands the whole of it over once complete.

    A client may stop reading before the end (the ``openai`` stream stops at ``data: [DONE]``):
    closing then reads what is left, so the recording is the whole body the server sent."""

    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[bytes], None], failed: Callable[[BaseException], None]):
        self.inner, self.done, self.failed = inner, done, failed
        self.parts: list[bytes] = []
        self._it: Iterator[bytes] | None = None
        self._state = "open"  # open -> complete | failed -> closed

    def _chunks(self) -> Iterator[bytes]:
        if self._it is None:
            self._it = iter(self.inner)
        try:
            for chunk in self._it:
                self.parts.append(chunk)
                yield chunk
        except httpx.TransportError as exc:
            self._state = "failed"
            self.failed(exc)
            raise
        self._state = "complete"

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()

    def close(self) -> None:
        if self._state == "open":
            with contextlib.suppress(httpx.TransportError):
                for _ in self._chunks():
                    pass
        self.inner.close()
        if self._state == "complete":
            self.done(b"".join(self.parts))
        self._state = "closed"


def decoded(status: int, headers: httpx.Headers, raw: bytes) -> bytes:
    """The body as the client reads it (gzip/deflate/br undone), for the recording."""
    encoding = headers.get("content-encoding")
    if not encoding:
        return raw
    return httpx.Response(status, headers={"content-encoding": encoding}, content=raw).read()


class RecordingTransport(httpx.BaseTransport):
    """Sends each request to the provider and records the answer (see the module docstring)."""

    def __init__(self, labels: Labels, recordings: Recordings, inner: httpx.BaseTransport | None = None):
        self.labels, self.recordings = labels, recordings
        self.inner = inner or httpx.HTTPTransport()

    def close(self) -> None:
        self.inner.close()

    def _put(self, endpoint: str, items: list[Item], resp: RecordedResponse) -> None:
        responses = split_embedding_response(items, resp) if items[0].index is not None else [resp]
        self.recordings.put(self.labels, endpoint, items, responses)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        secrets = secrets_of(request)
        endpoint, items = split_request(self.labels, request, secrets)

        def failed(exc: BaseException) -> None:
            self._put(endpoint, items, RecordedResponse(error=f"{type(exc).__name__}: {mask(str(exc), secrets)}"[:300]))

        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            failed(exc)
            raise

        def done(raw: bytes) -> None:
            body = decoded(response.status_code, response.headers, raw)
            self._put(endpoint, items, recorded_response(response.status_code, response.headers, body, secrets))

        return httpx.Response(response.status_code, headers=response.headers, stream=_TeeStream(response.stream, done, failed),
                              extensions=response.extensions)


def _as_format(embedding, fmt: str):
    """An embedding as the request asked for it: a base64 string of float32s, or a list of floats."""
    if fmt == "base64":
        return embedding if isinstance(embedding, str) else base64.b64encode(np.asarray(embedding, dtype=np.float32).tobytes()).decode()
    return np.frombuffer(base64.b64decode(embedding), dtype=np.float32).tolist() if isinstance(embedding, str) else embedding


def replayed(request: httpx.Request, entries: list[CassetteEntry], items: list[Item]) -> httpx.Response:
    """The recorded answer to ``request`` (an embedding batch is put together from its inputs' entries)."""
    for entry in entries:
        if entry.response.error is not None:
            name, _, message = entry.response.error.partition(": ")
            cls = getattr(httpx, name, None)
            cls = cls if isinstance(cls, type) and issubclass(cls, httpx.TransportError) else httpx.TransportError
            raise cls(f"(replayed) {message}", request=request)
    first = entries[0].response
    if items[0].index is None or not _ok(first) or not all(_ok(e.response) for e in entries):
        bad = next((e.response for e in entries if not _ok(e.response)), first)
        return httpx.Response(bad.status, headers=bad.headers, content=response_bytes(bad), request=request)
    fmt = json.loads(request.read() or b"{}").get("encoding_format", "float")
    data = []
    for it, entry in zip(items, entries):
        d = json.loads(response_bytes(entry.response))
        data.append({**d, "index": it.index, "embedding": _as_format(d["embedding"], fmt)})
    body = json.dumps({"object": "list", "data": data, "model": entries[0].request.get("model")}).encode()
    return httpx.Response(first.status, headers={"content-type": "application/json"}, content=body, request=request)


class ReplayTransport(httpx.BaseTransport):
    """Answers from recorded entries (``lookup``); a missing one is a :class:`CassetteMiss`, or goes
    to ``live`` (a recording transport) when replay is not strict. Keys served are added to ``used``."""

    def __init__(self, labels: Labels, lookup: Callable[[str], CassetteEntry | None], source: str, *,
                 live: httpx.BaseTransport | None = None, used: set[str] | None = None):
        self.labels, self.lookup, self.source, self.live = labels, lookup, source, live
        self.used = used if used is not None else set()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint, items = split_request(self.labels, request, secrets_of(request))
        entries = [self.lookup(it.key) for it in items]
        if any(e is None for e in entries):
            if self.live is not None:
                return self.live.handle_request(request)
            miss = items[entries.index(None)]
            what = f"input {miss.index} of an embedding batch" if miss.index is not None else "request"
            raise CassetteMiss(f"{self.source}: no recorded answer for the {self.labels.role} {what} to {self.labels.provider}:"
                               f"{self.labels.model} at {endpoint} (request hash {miss.request_hash[:16]})")
        self.used.update(it.key for it in items)
        return replayed(request, entries, items)


class HostedHttp:
    """The HTTP layer under every hosted call of one execution (owned by ``Components``).

    Args:
        recordings: Where live answers are recorded (None: not recorded).
        lookup: Answers to replay by key (a cassette's, or the recordings' when exporting); None: live.
        source: Names what is replayed in a miss's message (the cassette file).
        strict: A request missing from ``lookup`` stops the run; else it goes live (and is recorded).
    """

    def __init__(self, *, recordings: Recordings | None = None, lookup: Callable[[str], CassetteEntry | None] | None = None,
                 source: str = "", strict: bool = True):
        self.recordings, self.lookup, self.source, self.strict = recordings, lookup, source, strict
        self.used: set[str] = set()  # keys answered from ``lookup``
        self._clients: list[httpx.Client] = []

    @classmethod
    def for_workspace(cls, recordings_dir: Path, replay: str | None = None, strict: bool = True) -> HostedHttp:
        """Recording into ``recordings_dir``; or replaying the cassette ``replay`` (recording only
        what goes live when not strict)."""
        if not replay:
            return cls(recordings=Recordings(recordings_dir))
        entries = load_cassette(replay).by_key()
        return cls(recordings=None if strict else Recordings(recordings_dir), lookup=entries.get, source=str(replay), strict=strict)

    @property
    def replaying(self) -> bool:
        return self.lookup is not None

    def client(self, role: str, provider: str, model: str) -> httpx.Client:
        """An ``httpx.Client`` for one hosted model's calls, labelled for its recordings."""
        labels = Labels(role, provider, model)
        live = RecordingTransport(labels, self.recordings) if self.recordings is not None else httpx.HTTPTransport()
        transport = live if self.lookup is None else ReplayTransport(labels, self.lookup, self.source, used=self.used,
                                                                       live=None if self.strict else live)
        client = httpx.Client(transport=transport, follow_redirects=True, timeout=httpx.Timeout(120.0))
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.recordings is not None:
            self.recordings.close()

    def __enter__(self) -> HostedHttp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def now_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
