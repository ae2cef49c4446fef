"""The record/replay HTTP layer (providers/recording.py) and the cassette file, on httpx.MockTransport."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from workbench.config.cassette import Cassette, load_cassette, write_cassette
from workbench.errors import ConfigError
from workbench.providers.recording import (
    CassetteMiss,
    HostedHttp,
    Labels,
    Recordings,
    RecordingTransport,
    ReplayTransport,
    endpoint_of,
    request_key,
)

KEY = "sk-unit-canary-99"


def _echoing(status: int = 200):
    """A provider that answers embeddings (base64) and chat, echoing the caller's key everywhere it can."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        auth = request.headers.get("authorization", "")
        if request.url.path.endswith("/embeddings"):
            data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(np.full(3, len(t), np.float32).tobytes()).decode()}
                    for i, t in enumerate(body["input"])]
            return httpx.Response(status, json={"object": "list", "data": data, "model": body["model"], "echo": auth})
        return httpx.Response(status, json={"id": f"x-{auth}", "answer": body["model"]}, headers={"x-echo": auth, "set-cookie": "s=1"})

    return httpx.MockTransport(handler)


def _post(transport, url: str, body: dict, key: str = KEY) -> httpx.Response:
    with httpx.Client(transport=transport) as client:
        return client.post(url, json=body, headers={"Authorization": f"Bearer {key}", "api-key": key})


def test_the_key_is_provider_model_endpoint_and_content():
    chat = "POST https://x/v1/chat/completions"
    assert request_key("openai", "a", chat, "h") != request_key("openai", "b", chat, "h")  # two models, same request
    assert request_key("openai", "a", chat, "h") != request_key("openai", "a", chat.replace("x", "y"), "h")
    req = httpx.Request("POST", "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21&sig=SECRET")
    assert endpoint_of(req) == "POST https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"


def test_recording_keeps_no_secret_and_replay_returns_the_answer(tmp_path):
    rec = Recordings(tmp_path / "rec")
    labels = Labels("generation", "openai", "m1")
    live = _post(RecordingTransport(labels, rec, _echoing()), "https://api.example/v1/chat/completions", {"model": "m1", "q": 1})
    assert live.json()["id"] == f"x-Bearer {KEY}"  # the caller saw the real answer
    keys = [k.removeprefix("rec:") for k in rec.cache.iterkeys()]
    entry = rec.get(keys[0])
    dumped = json.dumps(entry.model_dump(mode="json"))
    assert KEY not in dumped and "x-echo" not in dumped and "set-cookie" not in dumped and entry.response.headers == {
        "content-type": "application/json"}
    # replayed with another key (or none): same key, same (masked) answer
    replay = ReplayTransport(labels, rec.get, "cassette.json")
    again = _post(replay, "https://api.example/v1/chat/completions", {"q": 1, "model": "m1"}, key="other")
    assert again.json() == {"id": "x-Bearer ***", "answer": "m1"}
    with pytest.raises(CassetteMiss, match=r"^cassette.json: no recorded answer for the generation request to openai:m1 at POST "
                                           r"https://api.example/v1/chat/completions \(request hash [0-9a-f]{16}\)$"):
        _post(replay, "https://api.example/v1/chat/completions", {"q": 2, "model": "m1"})
    rec.close()


def test_embeddings_are_recorded_per_text_and_replayed_in_any_batch_and_format(tmp_path):
    rec = Recordings(tmp_path / "rec")
    labels = Labels("embedding", "openai_compatible", "e")
    url = "http://h/v1/embeddings"
    _post(RecordingTransport(labels, rec, _echoing()), url, {"model": "e", "input": ["a", "bb", "ccc"], "encoding_format": "base64"})
    assert len(list(rec.cache.iterkeys())) == 3
    replay = ReplayTransport(labels, rec.get, "c")
    out = _post(replay, url, {"model": "e", "input": ["ccc", "a"], "encoding_format": "float"}).json()
    assert [d["embedding"] for d in out["data"]] == [[3.0] * 3, [1.0] * 3] and [d["index"] for d in out["data"]] == [0, 1]
    b64 = _post(replay, url, {"model": "e", "input": ["bb"], "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(b64), np.float32).tolist() == [2.0] * 3
    with pytest.raises(CassetteMiss, match="input 1 of an embedding batch"):
        _post(replay, url, {"model": "e", "input": ["a", "dddd"]})
    rec.close()


def test_a_failure_never_overwrites_a_recorded_success(tmp_path):
    rec = Recordings(tmp_path / "rec")
    labels = Labels("generation", "openai", "m")
    url, body = "https://api.example/v1/chat/completions", {"model": "m"}
    _post(RecordingTransport(labels, rec, _echoing(200)), url, body)
    _post(RecordingTransport(labels, rec, _echoing(500)), url, body)
    (key,) = [k.removeprefix("rec:") for k in rec.cache.iterkeys()]
    assert rec.get(key).response.status == 200
    rec.close()


def test_cassette_file_round_trip_and_one_line_errors(tmp_path):
    with HostedHttp(recordings=Recordings(tmp_path / "rec")) as http:
        client = http.client("rerank", "hosted", "r")
        client._transport.inner = _echoing()  # noqa: SLF001 - the test's provider
        client.post("http://h/v1/rerank", json={"model": "r"}, headers={"Authorization": f"Bearer {KEY}"})
        entries = [http.recordings.get(k.removeprefix("rec:")) for k in http.recordings.cache.iterkeys()]
    path = write_cassette(Cassette(experiment="e", created_at="t", entries=entries), tmp_path / "c.json.gz")
    assert load_cassette(path).entries == entries and KEY.encode() not in path.read_bytes()
    (tmp_path / "bad.json").write_text(json.dumps({"format": "workbench-cassette", "experiment": "e", "created_at": "t",
                                                   "entries": [{"key": "nothex"}]}))
    with pytest.raises(ConfigError, match=r"bad.json: entries\[0\]"):
        load_cassette(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a cassette"):
        load_cassette(tmp_path / "other.json")
