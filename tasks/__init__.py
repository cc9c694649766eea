"""Celery task wrappers: ids in, a session opened, a domain function called, committed.

Also the Celery app factory (shared by the worker and by the API, which publishes) and
the kind -> task routing table.
"""
