"""Plant's core: typed settings, database engine and sessions, tables and domain logic.

Every process (API, worker, beat, CLI) imports this package; it imports neither Flask
nor Celery, which an import-linter contract in CI enforces.
"""
