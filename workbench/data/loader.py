"""``load_dataset``: one entry point for every dataset layout (BEIR folder, documents folder,
evaluation set), dispatching on what the folder holds."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .corpus import load_beir, load_documents_folder
from .evalset import load_evalset
from .types import Dataset


def load_dataset(folder: str | Path, memo=None) -> Dataset:
    """Load a dataset folder in any layout. ``memo`` (a diskcache) remembers file hashes across
    processes, so a plan's kernel or worker reloading the dataset does not hash it again."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found")
    if (folder / "evalset.json").exists():
        return load_evalset(folder)
    if (folder / "corpus.jsonl").exists():
        return load_beir(folder, memo)
    if (folder / "documents").is_dir():
        return load_documents_folder(folder)
    raise DatasetError(f"{folder}: neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv), a documents folder "
                       "(documents/, questions.jsonl) nor an evaluation set (evalset.json)")
