"""Content hashes: canonical JSON, memoised file hashes, folder hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import diskcache
import pytest

from workbench import hashing
from workbench.hashing import canonical_json, file_sha256, hash_obj, sha256_text, tree_sha256


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with an empty in-memory memo (restored afterwards)."""
    monkeypatch.setattr(hashing, "_FILE_HASHES", {})


def test_canonical_json_ignores_key_order_and_whitespace():
    a = {"b": 1, "a": {"y": [1, 2], "x": None}, "c": "é"}
    b = {"c": "é", "a": {"x": None, "y": [1, 2]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":null,"y":[1,2]},"b":1,"c":"é"}'
    assert hash_obj(a) == hash_obj(b) == sha256_text(canonical_json(a))
    assert hash_obj(a) != hash_obj({**a, "b": 2})
    assert hash_obj({"a": [1, 2]}) != hash_obj({"a": [2, 1]})  # list order is content
    assert len(hash_obj(a, length=16)) == 16 and hash_obj(a).startswith(hash_obj(a, length=16))
    assert canonical_json({"p": Path("/x")}) == '{"p":"/x"}'  # non-JSON values by str()


def test_sha256_text_matches_hashlib():
    assert sha256_text("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_file_sha256_is_the_bytes_digest(tmp_path: Path):
    p = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # spans several 1 MiB blocks
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest() == file_sha256(str(p))


def test_file_sha256_memo_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = tmp_path / "model.bin"
    p.write_bytes(b"weights v1")
    with diskcache.Cache(str(tmp_path / "memo")) as memo:
        digest = file_sha256(p, memo)
        assert digest == hashlib.sha256(b"weights v1").hexdigest()
        assert list(memo.iterkeys()) and all(memo[k] == digest for k in memo.iterkeys())
        # A new process (empty in-memory memo) takes the digest from disk without reading the file:
        # plant a marker under the stored key to prove it.
        monkeypatch.setattr(hashing, "_FILE_HASHES", {})
        (key,) = list(memo.iterkeys())
        memo[key] = "from-disk-memo"
        assert file_sha256(p, memo) == "from-disk-memo"
        # A changed file (size and mtime) is hashed again.
        p.write_bytes(b"weights v2, longer")
        assert file_sha256(p, memo) == hashlib.sha256(b"weights v2, longer").hexdigest()
        assert len(memo) == 2


def test_file_sha256_in_memory_memo_keys_on_mtime(tmp_path: Path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"aaaa")
    first = file_sha256(p)
    assert first in hashing._FILE_HASHES.values()
    p.write_bytes(b"bbbb")  # same size
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_sha256(p) == hashlib.sha256(b"bbbb").hexdigest() != first


def write_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("beta", encoding="utf-8")
    (root / ".cache").write_text("ignored", encoding="utf-8")
    return root


def test_tree_sha256_depends_on_content_and_relative_paths(tmp_path: Path):
    one, two = write_tree(tmp_path / "one"), write_tree(tmp_path / "two")
    digest = tree_sha256(one)
    assert digest == tree_sha256(two)  # location does not matter
    (one / ".cache").write_text("still ignored", encoding="utf-8")
    assert tree_sha256(one) == digest
    (one / "sub" / "b.txt").write_text("beta, edited", encoding="utf-8")
    assert tree_sha256(one) != digest
    (two / "sub" / "b.txt").rename(two / "b.txt")
    assert tree_sha256(two) != digest  # a moved file changes the tree
    (tmp_path / "three").mkdir()
    (tmp_path / "three" / "c.txt").write_text("new", encoding="utf-8")
    assert tree_sha256(write_tree(tmp_path / "four")) == digest
    assert tree_sha256(tmp_path / "three") != digest
