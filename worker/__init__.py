"""The Celery process entry point: ``celery -A worker.app worker|beat|flower``."""
