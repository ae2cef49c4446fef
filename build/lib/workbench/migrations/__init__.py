"""Alembic migrations of the results store (SQLite and PostgreSQL); see README.md in this folder."""
