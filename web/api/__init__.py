"""Blueprints of the versioned JSON API under ``/api/v1``."""
