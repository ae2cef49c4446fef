"""Large corpora of real text available offline, for bench/scale.py (see bench/README.md).

The text: paragraphs of the documentation that ships with Python and with the installed packages --
the interpreter's help topics, the docstrings of the standard library and of every package in the
environment (read with ``ast``; nothing is imported), and the packages' ``.md``/``.rst``/``.txt``
files. A paragraph is a blank-line separated block of 20-200 words that reads as prose (no doctest
prompt, at least 60% of its words alphabetic); exact duplicates (whitespace-normalised) are dropped.
Sources are read in a fixed order (help topics, stdlib, site-packages sorted by path) until the
pool holds what was asked for, so the pool is a deterministic function of the installation, and its
sha256 is recorded.

A corpus of N passages is the 240 XQuAD paragraphs (``data/xquad_en``: the relevant ones) plus the
first N - 240 paragraphs of the pool shuffled with ``random.Random(seed)``; the corpora of a run are
nested (the 10,000-passage corpus is part of the 30,000 one). Queries are a seeded sample of the
XQuAD questions with their qrels, the same at every size.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XQUAD = ROOT / "data" / "xquad_en"
MIN_WORDS, MAX_WORDS = 20, 200
PROSE_SHARE = 0.6  # at least this share of a paragraph's words are alphabetic words
WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,;:!?)]?$")
STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "tkinter", "turtledemo",
               "ensurepip", "venv", "distutils", "pydoc_data"}
SITE_SKIP = {"test", "tests", "testing", "_vendor", "vendored", "benchmarks", "__pycache__"}
DOC_SUFFIXES = (".md", ".rst", ".txt")


def paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of ``text`` (20-200 words, no doctest, mostly alphabetic words)."""
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS or ">>>" in para:
            continue
        if sum(bool(WORD.match(w)) for w in words) >= PROSE_SHARE * len(words):
            yield para.strip()


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _python_files(root: Path, skip: set[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & skip)


def sources() -> Iterator[tuple[str, str, str]]:
    """(source, name, text) in a fixed order: help topics, stdlib docstrings, site-packages
    docstrings, site-packages documentation files."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield "pydoc", topic, topics[topic]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _python_files(stdlib, STDLIB_SKIP):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        for doc in _docstrings(path):
            yield "stdlib", module, doc
    site = Path(sysconfig.get_paths()["purelib"])
    for path in _python_files(site, SITE_SKIP):
        module = ".".join(path.relative_to(site).with_suffix("").parts)
        for doc in _docstrings(path):
            yield "site", module, doc
    for path in sorted(p for p in site.rglob("*") if p.suffix in DOC_SUFFIXES and p.is_file()
                       and not set(p.relative_to(site).parts[:-1]) & SITE_SKIP and "dist-info" not in str(p)):
        try:
            yield "sitedoc", str(path.relative_to(site)), path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def build_pool(path: Path, size: int, exclude: set[str]) -> dict:
    """Write (or reuse) ``path``: the first ``size`` unique paragraphs (JSON lines ``_id``, ``title``,
    ``text``) read from :func:`sources` in order; ``exclude`` holds normalised texts to leave out.
    The pool of a size is the start of any larger pool, so a larger one already built is reused."""
    manifest = path.with_suffix(".json")
    if path.exists() and manifest.exists() and json.loads(manifest.read_text(encoding="utf-8"))["paragraphs"] == size:
        return json.loads(manifest.read_text(encoding="utf-8"))
    for larger in sorted(path.parent.glob("pool-*.jsonl")):  # the pool of a size is the start of any larger pool
        info = larger.with_suffix(".json")
        if info.exists() and json.loads(info.read_text(encoding="utf-8"))["paragraphs"] > size:
            rows = [json.loads(line) for line in larger.read_text(encoding="utf-8").splitlines()[:size]]
            return _write_pool(path, rows, size, {"prefix_of": larger.name})
    t0 = time.perf_counter()
    seen, rows, counters = set(exclude), [], {}
    for source, name, text in sources():
        for para in paragraphs(text):
            norm = " ".join(para.split())
            if norm in seen:
                continue
            seen.add(norm)
            n = counters[(source, name)] = counters.get((source, name), -1) + 1
            rows.append({"_id": f"{source}:{name}:{n}".replace(" ", "_"), "title": f"{source} {name}", "text": para})
            if len(rows) >= size:
                return _write_pool(path, rows, size, {"build_s": round(time.perf_counter() - t0, 1)})
    raise SystemExit(f"only {len(rows)} paragraphs of real text in this installation, {size} needed")


def _write_pool(path: Path, rows: list[dict], size: int, extra: dict) -> dict:
    rows = rows[:size]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(body, encoding="utf-8")
    info = {"paragraphs": len(rows), "sha256": hashlib.sha256(body.encode()).hexdigest(),
            "by_source": {s: sum(r["_id"].startswith(s + ":") for r in rows) for s in ("pydoc", "stdlib", "site", "sitedoc")},
            "words_mean": round(sum(len(r["text"].split()) for r in rows) / len(rows), 1), **extra}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_corpus(folder: Path, pool_path: Path, n_passages: int, n_queries: int, seed: int = 0) -> dict:
    """A BEIR folder of ``n_passages`` passages (XQuAD + pool), ``n_queries`` XQuAD questions."""
    xquad = _jsonl(XQUAD / "corpus.jsonl")
    pool = _jsonl(pool_path)
    random.Random(seed).shuffle(pool)
    distractors = pool[:n_passages - len(xquad)]
    if len(distractors) < n_passages - len(xquad):
        raise SystemExit(f"the pool holds {len(pool)} paragraphs, {n_passages - len(xquad)} needed")
    qrels = [line.split("\t") for line in (XQUAD / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    judged = sorted({r[0] for r in qrels})
    random.Random(seed).shuffle(judged)
    picked = set(judged[:n_queries])
    queries = [q for q in _jsonl(XQUAD / "queries.jsonl") if q["_id"] in picked]
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "corpus.jsonl": "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in xquad + distractors),
        "queries.jsonl": "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries),
        "qrels.tsv": "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels if r[0] in picked),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    words = [len(d["text"].split()) for d in xquad + distractors]
    return {"path": str(folder.relative_to(ROOT)), "n_passages": len(words), "n_xquad": len(xquad), "n_queries": len(queries),
            "sha256": hashlib.sha256("".join(files[f] for f in sorted(files)).encode()).hexdigest(),
            "words_total": sum(words), "words_mean": round(sum(words) / len(words), 1), "seed": seed}
