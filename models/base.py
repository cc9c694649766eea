"""Declarative base, constraint naming convention and the shared column aliases.

Every table derives from :class:`Base`. The naming convention gives each index and
constraint a predictable name, which keeps Alembic autogenerate and downgrades exact.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from sqlalchemy import DateTime, MetaData, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UUIDPk = Annotated[
    uuid.UUID,
    mapped_column(UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
]
CreatedAt = Annotated[
    dt.datetime, mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
]
UpdatedAt = Annotated[
    dt.datetime,
    mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    ),
]
Timestamp = Annotated[dt.datetime, mapped_column(DateTime(timezone=True))]


class Base(DeclarativeBase):
    """Root of every mapped table; its metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
