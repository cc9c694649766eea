"""The API process's long-lived resources and its per-request database session.

``create_app`` builds one :class:`Services` and stores it on the app. A request gets at
most one session (opened lazily, always closed in teardown); views commit explicitly,
and only then publish any Celery message.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_session_factory
from models.embeddings import Embedder, make_embedder
from models.keys import keyring_from_settings
from models.settings import Settings
from models.signing import KeyRing
from tasks.celery_app import create_celery

EXTENSION_KEY = "plant"


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    celery: Celery
    redis: redis.Redis
    keyring: KeyRing
    embedder: Embedder


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings)
    return Services(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        celery=create_celery(settings),
        redis=redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.health_timeout_seconds,
            socket_connect_timeout=settings.health_timeout_seconds,
        ),
        keyring=keyring_from_settings(settings),
        embedder=make_embedder(settings.embedder),
    )


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = services().sessions()
    return g.db_session


def close_db_session(_: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def init_services(app: Flask, settings: Settings) -> None:
    app.extensions[EXTENSION_KEY] = build_services(settings)
    app.teardown_appcontext(close_db_session)
