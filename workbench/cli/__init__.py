"""The ``workbench`` command: a thin typer layer over the run core, the store and the report.

Each module registers its commands on the one ``app`` (``workbench.cli.app``): ``run`` (a bake-off),
``results`` (leaderboards, reports, comparisons, exports, gates), ``questions`` (evaluation sets),
``decisions`` (every pair of runs, sample size), ``cassette`` (record/replay of hosted calls), ``plan`` and
``race replay`` (adaptive bake-offs).
"""

# Importing a module registers its commands; their order is `workbench --help`'s.
from . import run  # noqa: F401  # isort: skip
from . import results  # noqa: F401  # isort: skip
from . import questions  # noqa: F401  # isort: skip
from . import decisions  # noqa: F401  # isort: skip
from . import cassette  # noqa: F401  # isort: skip
from . import race  # noqa: F401  # isort: skip
from .app import app

__all__ = ["app"]
