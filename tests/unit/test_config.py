"""Experiment files: the shipped ones validate, the grid expands as documented, and every bad file
fails with one line naming the file, the field path, the line and (for typos) the closest name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from workbench.config.experiment import ChunkingSpec, EmbeddingSpec, GridSpec, RetrievalSpec, expand_grid, load_experiment, parse_experiment
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# Block style so that every field has a line of its own; line numbers below refer to this text.
BASE = """\
name: t
dataset: data
queries: {limit: 10, seed: 0}
grid:
  chunking:
    - splitter: sentence
      chunk_size: 128
      chunk_overlap: 16
  embedding:
    - provider: local
      model: all-MiniLM-L6-v2
  retrieval:
    - method: dense
      top_k: 5
    - method: bm25
      top_k: 5
  generation:
    - provider: local
      model: smollm2-135m
      prompt: prompt.yaml
"""


@pytest.fixture
def exp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the dataset folder and prompt file BASE names; also the cwd, so the cwd
    fallback of path resolution cannot find the repository's own data/ folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "prompt.yaml").write_text("mode: chat\nuser: '{context} {question}'\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit(old: str, new: str) -> Callable[[str], str]:
    """Replace ``old`` (which must occur exactly once) in the experiment text."""

    def apply(text: str) -> str:
        assert text.count(old) == 1, f"test bug: {old!r} occurs {text.count(old)} times"
        return text.replace(old, new)

    return apply


def const(value: str | bytes) -> Callable[[str], str | bytes]:
    return lambda _text: value


# id: (edit of BASE, line or None, field path or None, substrings the message must contain)
BAD = {
    "malformed_yaml": (edit("      top_k: 5\n    - method: bm25", "      top_k: [5\n    - method: bm25"), 15, None,
                       ["malformed YAML"]),
    "top_level_list": (const("- name: t\n- dataset: data\n"), None, None, ["expected a mapping", "got list"]),
    "top_level_scalar": (const("just a string\n"), None, None, ["expected a mapping", "got str"]),
    "empty_file": (const(""), None, None, ["expected a mapping"]),
    "unknown_top_level_key": (edit("dataset: data", "datset: data"), 2, "datset",
                              ["unknown key 'datset'", "did you mean 'dataset'"]),
    "unknown_nested_key": (edit("chunk_size: 128", "chunk_sise: 128"), 7, "grid.chunking[0].chunk_sise",
                           ["unknown key 'chunk_sise'", "did you mean 'chunk_size'"]),
    "unknown_generation_key": (edit("      prompt: prompt.yaml", "      prompt: prompt.yaml\n      temprature: 0.5"), 21,
                               "grid.generation[0].temprature", ["did you mean 'temperature'"]),
    "wrong_type": (edit("      top_k: 5\n    - method: bm25", "      top_k: five\n    - method: bm25"), 14,
                   "grid.retrieval[0].top_k", ["valid integer"]),
    "empty_axis": (edit("  retrieval:\n    - method: dense\n      top_k: 5\n    - method: bm25\n      top_k: 5\n", "  retrieval: []\n"),
                   12, "grid.retrieval", ["at least 1 item"]),
    "empty_generation_axis": (edit("  generation:\n    - provider: local\n      model: smollm2-135m\n      prompt: prompt.yaml\n",
                                   "  generation: []\n"), 4, "grid", ["generation: give at least one model"]),
    "unknown_splitter": (edit("splitter: sentence", "splitter: sentense"), 6, "grid.chunking[0].splitter",
                         ["unknown splitter 'sentense'", "did you mean 'sentence'", "known: none, sentence, token"]),
    "unknown_provider": (edit("    - provider: local\n      model: all-MiniLM", "    - provider: locall\n      model: all-MiniLM"), 10,
                         "grid.embedding[0].provider", ["unknown embedding provider 'locall'", "did you mean 'local'"]),
    "unknown_local_embedding_model": (edit("model: all-MiniLM-L6-v2", "model: all-MiniLM-L6"), 11, "grid.embedding[0].model",
                                      ["unknown local embedding model 'all-MiniLM-L6'", "did you mean 'all-MiniLM-L6-v2'"]),
    "unknown_local_llm": (edit("model: smollm2-135m", "model: smollm-135m"), 19, "grid.generation[0].model",
                          ["unknown local LLM 'smollm-135m'", "did you mean 'smollm2-135m'"]),
    "unknown_method_bm52": (edit("method: bm25", "method: bm52"), 15, "grid.retrieval[1].method",
                            ["unknown retrieval method 'bm52'", "did you mean 'bm25'"]),
    "unknown_method_dense2": (edit("method: dense", "method: dense2"), 13, "grid.retrieval[0].method",
                              ["unknown retrieval method 'dense2'", "did you mean 'dense'"]),
    "overlap_equals_size": (edit("chunk_overlap: 16", "chunk_overlap: 128"), 8, "grid.chunking[0].chunk_overlap",
                            ["chunk_overlap (128) must be smaller than chunk_size (128)"]),
    "overlap_exceeds_size": (edit("chunk_overlap: 16", "chunk_overlap: 300"), 8, "grid.chunking[0].chunk_overlap",
                             ["chunk_overlap (300) must be smaller than chunk_size (128)"]),
    "sentence_without_size": (edit("      chunk_size: 128\n      chunk_overlap: 16\n", ""), 6, "grid.chunking[0]",
                              ["splitter 'sentence' needs chunk_size"]),
    "top_k_zero": (edit("      top_k: 5\n    - method: bm25", "      top_k: 0\n    - method: bm25"), 14, "grid.retrieval[0].top_k",
                   ["greater than 0"]),
    "top_k_negative": (edit("method: bm25\n      top_k: 5", "method: bm25\n      top_k: -3"), 16, "grid.retrieval[1].top_k",
                       ["greater than 0"]),
    "query_limit_zero": (edit("{limit: 10, seed: 0}", "{limit: 0, seed: 0}"), 3, "queries.limit", ["greater than 0"]),
    "duplicate_grid_entry": (edit("method: bm25", "method: dense"), 4, "grid", ["retrieval[1] repeats an earlier entry"]),
    "missing_dataset_folder": (edit("dataset: data", "dataset: nodata"), None, "dataset", ["'nodata' not found"]),
    "missing_prompt_file": (edit("prompt: prompt.yaml", "prompt: missing.yaml"), None, "grid.generation[0].prompt",
                            ["'missing.yaml' not found"]),
    "dense_without_embedding": (edit("  embedding:\n    - provider: local\n      model: all-MiniLM-L6-v2\n", ""), 4, "grid",
                                ["'dense'/'hybrid' need at least one entry under 'embedding'"]),
    "openai_compatible_without_base_url": (edit("    - provider: local\n      model: all-MiniLM-L6-v2",
                                                "    - provider: openai_compatible\n      model: my-embedder"),
                                           10, "grid.embedding[0].base_url", ["'openai_compatible' needs base_url"]),
    "local_model_with_base_url": (edit("model: all-MiniLM-L6-v2", "model: all-MiniLM-L6-v2\n      base_url: http://x"), 10,
                                  "grid.embedding[0]", ["takes no base_url"]),
    "bad_experiment_name": (edit("name: t", "name: 'my experiment!'"), 1, "name", ["should match pattern"]),
    "missing_grid": (lambda text: text.split("grid:")[0], None, "grid", ["required field is missing"]),
    "not_utf8": (lambda text: text.encode("utf-8") + "description: caf\xe9\n".encode("latin-1"), 21, None,
                 ["not UTF-8 text"]),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_experiment_file_is_one_line_config_error(exp_dir: Path, case):
    change, line, field, parts = case
    path = exp_dir / "bad.yaml"
    content = change(BASE)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where), message
    if field is not None:
        assert message.startswith(f"{where}{field}: "), message
    for part in parts:
        assert part in message, message
    assert "did you mean" not in message or any("did you mean" in p for p in parts), message


def test_base_experiment_is_valid(exp_dir: Path):
    path = exp_dir / "ok.yaml"
    path.write_text(BASE, encoding="utf-8")
    exp = load_experiment(path)
    assert exp.name == "t" and exp.dataset_path == (exp_dir / "data").resolve()
    assert exp.prompt_paths == {"prompt.yaml": (exp_dir / "prompt.yaml").resolve()}
    assert exp.spec.queries.limit == 10
    assert len(exp.runs()) == 2


def test_missing_experiment_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_parse_experiment_without_a_file_on_disk(exp_dir: Path):
    exp = parse_experiment(BASE.replace("name: t", "name: from_text"), exp_dir / "virtual.yaml")
    assert exp.name == "from_text" and exp.path == (exp_dir / "virtual.yaml").resolve()


@pytest.mark.parametrize("name", ["quickstart.yaml", "retrieval_xquad.yaml", "kpis_smollm2.yaml"])
def test_shipped_experiments_validate(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    exp = load_experiment(ROOT / "experiments" / name)
    assert exp.dataset_path == (ROOT / "data" / "xquad_en").resolve()
    for written, resolved in exp.prompt_paths.items():
        assert resolved.is_file() and resolved.name == Path(written).name
    assert len(exp.runs(titled=True)) == (4 if name == "kpis_smollm2.yaml" else len(exp.runs()))  # 2 contexts x 2 prompts


def test_quickstart_expands_to_four_runs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml")
    runs = exp.runs()
    assert len(runs) == 4
    assert [r.retrieval.method for r in runs] == ["dense", "bm25"] * 2
    assert [r.chunking.chunk_size for r in runs] == [128] * 2 + [16] * 2  # 16-token fragments: clearly worse
    search = exp.spec.search
    assert search.is_race and search.metric == "f1" and search.prune_retrieval.metric == "chunk_mrr"
    for r in runs:
        assert (r.embedding is None) == (r.retrieval.method == "bm25")
        assert r.generation is not None and r.generation.model == "smollm2-135m"
        assert r.rerank is None and r.final_k == 5
    assert runs[1].axes() == {"chunking": "sentence 128/16", "embedding": "-", "retrieval": "bm25@5", "rerank": "-",
                              "generation": "smollm2-135m", "prompt": "grounded_qa"}
    assert len(set(runs)) == 4


def test_bm25_runs_collapse_across_embedders(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    runs = load_experiment(ROOT / "experiments" / "retrieval_xquad.yaml").runs()
    # 1 chunking x 2 embedders x (bm25, dense) = 4 grid points, but BM25 ignores the embedder.
    assert [(r.retrieval.method, r.embedding.model if r.embedding else None) for r in runs] == [
        ("bm25", None), ("dense", "all-MiniLM-L6-v2"), ("dense", "multilingual-e5-small")]
    assert all(r.generation is None for r in runs)


def test_expand_grid_drops_rerank_none_and_keeps_order():
    grid = GridSpec.model_validate({
        "chunking": [{"splitter": "none"}, {"splitter": "token", "chunk_size": 64, "chunk_overlap": 8}],
        "embedding": [{"provider": "local", "model": "all-MiniLM-L6-v2"}],
        "retrieval": [{"method": "bm25"}, {"method": "hybrid", "top_k": 3, "candidates": 10}],
        "rerank": [{"method": "none"}, {"method": "embedding", "model": "multilingual-e5-small", "candidates": 10, "top_n": 2}],
    })
    runs = expand_grid(grid)
    assert len(runs) == 2 * 2 * 2
    assert [r.rerank.method if r.rerank else None for r in runs[:2]] == [None, "embedding"]
    assert [r.final_k for r in runs[:4]] == [5, 2, 3, 2]
    hybrid_reranked = runs[3]
    assert hybrid_reranked.first_stage().top_k == 10 and hybrid_reranked.retrieval.top_k == 3
    assert expand_grid(grid) == runs


def test_specs_are_immutable_and_hashable():
    spec = ChunkingSpec(splitter="sentence", chunk_size=128, chunk_overlap=16)
    assert spec == ChunkingSpec.model_validate({"splitter": "sentence", "chunk_size": 128, "chunk_overlap": 16})
    assert hash(spec) == hash(ChunkingSpec(splitter="sentence", chunk_size=128, chunk_overlap=16))
    with pytest.raises(Exception):
        spec.chunk_size = 64  # type: ignore[misc]
    assert RetrievalSpec(method="dense").needs_embedding and not RetrievalSpec(method="bm25").needs_embedding
    assert EmbeddingSpec(provider="openai", model="text-embedding-3-small").label() == "openai:text-embedding-3-small"


def test_search_defaults_to_the_grid_and_a_saved_plan_reloads_it(tmp_path):
    from workbench.config import ExperimentSpec

    spec = ExperimentSpec.model_validate({"name": "x", "dataset": "d", "grid": {"chunking": [{"splitter": "none"}],
                                                                               "retrieval": [{"method": "bm25"}]}})
    assert spec.search.strategy == "grid" and not spec.search.is_race
    again = ExperimentSpec.model_validate(spec.model_dump(mode="json"))  # a plan dumps every default
    assert again.search == spec.search
