"""A fake hosted provider on loopback for tests: OpenAI-style ``/v1/chat/completions`` (streamed
with usage, or not), ``/v1/embeddings`` (float or base64) and a Cohere/Jina-style ``/v1/rerank``.

Deterministic functions of (model, request): two models asked the same prompt answer differently
(so a cache that leaked answers across models would show), and the same request always gets the
same answer (so a recorded bake-off and its replay can be compared row by row). It requires
``Authorization: Bearer <key>`` and, like some real servers, echoes the key back (in a response
header and in the completion ``id``): a test can check that the key never reaches a cassette.

``delay_s`` holds each answer that long (a provider under load); ``requests`` counts requests per path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def vector(model: str, text: str, dim: int = 32) -> np.ndarray:
    """Sum of per-word random vectors seeded by (model, word): texts sharing words are close."""
    v = np.zeros(dim)
    for w in _words(text) or ["<empty>"]:
        seed = int.from_bytes(hashlib.md5(f"{model}|{w}".encode()).digest()[:8], "little")
        v += np.random.default_rng(seed).standard_normal(dim)
    return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)


def answer(model: str, messages: list[dict], max_tokens: int) -> str:
    """The context sentence sharing the most words with the question, cut to ``max_tokens`` words,
    with the model's name first: the same prompt gets a different answer from another model."""
    text = messages[-1]["content"] if messages else ""
    question = text.rsplit("Question:", 1)[-1]
    asked = set(_words(question.split("Answer", 1)[0]))
    best, best_n = "I don't know.", 0
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text.rsplit("Question:", 1)[0]):
        n = len(asked & set(_words(sentence)))
        if n > best_n:
            best, best_n = sentence.strip(), n
    words = [f"({model})", *best.split()]
    return " ".join(words[:max_tokens])


class FakeHostedServer:
    def __init__(self, key: str, *, delay_s: float = 0.0):
        self.key, self.delay_s = key, delay_s
        self.requests: Counter = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def __enter__(self) -> FakeHostedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answers -----------------------------------------------------------------------------------
    def chat(self, body: dict) -> tuple[str, int, int]:
        text = answer(body["model"], body.get("messages") or [{"content": body.get("prompt", "")}], int(body.get("max_tokens") or 16))
        prompt_tokens = sum(len(_words(m.get("content", ""))) for m in body.get("messages") or [])
        return text, prompt_tokens, len(text.split())

    def embeddings(self, body: dict) -> dict:
        data = []
        for i, text in enumerate(body["input"]):
            v = vector(body["model"], text)
            emb = base64.b64encode(v.tobytes()).decode() if body.get("encoding_format") == "base64" else [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": sum(len(_words(t)) for t in body["input"]), "total_tokens": 0}}

    def rerank(self, body: dict) -> dict:
        q = set(_words(body["query"]))
        scored = [(len(q & set(_words(d))) / (1 + len(_words(d))) + 1e-6 * (len(body["documents"]) - i), i)
                  for i, d in enumerate(body["documents"])]
        top = sorted(scored, reverse=True)[: body.get("top_n") or len(scored)]
        return {"model": body["model"], "results": [{"index": i, "relevance_score": round(s, 6)} for s, i in top]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, ctype: str = "application/json", extra: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("x-echo-key", self.headers.get("Authorization", ""))  # a careless server
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.requests[self.path] += 1
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    given = self.headers.get("Authorization", "")
                    return self._send(401, json.dumps({"error": {"message": f"invalid key {given}"}}).encode())
                if server.delay_s:
                    time.sleep(server.delay_s)
                if self.path == "/v1/embeddings":
                    return self._send(200, json.dumps(server.embeddings(body)).encode())
                if self.path == "/v1/rerank":
                    return self._send(200, json.dumps(server.rerank(body)).encode())
                if self.path == "/v1/chat/completions":
                    return self._chat(body)
                return self._send(404, b'{"error": {"message": "not found"}}')

            def _chat(self, body: dict) -> None:
                text, p, c = server.chat(body)
                cid = f"chatcmpl-{server.key}"  # echoes the key, as some servers echo what they were sent
                if not body.get("stream"):
                    return self._send(200, json.dumps({"id": cid, "object": "chat.completion", "model": body["model"], "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}).encode())
                events = [{"id": cid, "object": "chat.completion.chunk", "model": body["model"],
                           "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(text.split()) - 1 else "")}}]}
                          for i, w in enumerate(text.split())]
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({"id": cid, "object": "chat.completion.chunk", "model": body["model"], "choices": [],
                                   "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
                payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, payload.encode(), "text/event-stream")

            do_GET = do_POST

        return Handler
