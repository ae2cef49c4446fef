"""Alembic environment of the results store.

``Store`` runs it programmatically (``command.upgrade(cfg, "head")``) with an open connection in
``cfg.attributes["connection"]``; the ``alembic`` command line (``alembic -c
workbench/migrations/alembic.ini ...``) runs it with ``sqlalchemy.url`` from the ini file or
``$WORKBENCH_STORE``. ``target_metadata`` is the store's tables, so ``--autogenerate`` and
``alembic check`` compare the models in ``workbench/store.py`` with the migrations.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from workbench.store import metadata

config = context.config
target_metadata = metadata


def _configure(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("WORKBENCH_STORE") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    url = os.environ.get("WORKBENCH_STORE") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
