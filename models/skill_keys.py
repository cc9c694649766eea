"""The skill key a new skill gets when its creator sends none: derived from its name.

``slugify`` is the name's ASCII letters and digits, hyphenated; ``derived_skill_key`` adds a hash of
the name when another skill holds that slug already. ``models.registry.create_entity`` derives one
for a skill created without a key, and derives again if a skill created meanwhile took it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Skill

SKILL_KEY_LENGTH = Skill.__table__.c.skill_key.type.length  # the column's length: 200


def slugify(name: str) -> str:
    """The skill key derived from a name: its ASCII letters and digits, hyphenated, at most
    ``SKILL_KEY_LENGTH`` long (NFKD can spell one character as several: "㎈" is "cal").

    A name with no ASCII letter or digit ("日本語") gets ``skill-`` and the first 16 hex
    digits of the SHA-256 of its NFC form: the same for every spelling of one name, and
    another for each other name, where one fixed key made the second such skill a 409 on
    a ``skill_key`` its client never sent."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    slug = slug[:SKILL_KEY_LENGTH].rstrip("-")
    if slug:
        return slug
    return "skill-" + _name_hash(name)


def derived_skill_key(session: Session, name: str) -> str:
    """The skill key for a new skill sent without one: :func:`slugify`, or, when another skill
    holds that already (``C++`` and ``C#`` are both ``c``; ``Café`` and ``Cafe``), the slug
    with ``-`` and 16 hex digits of the SHA-256 of the NFC name, as for a name with no ASCII
    letter: the second such skill was a 409 on a key its client never sent."""
    slug = slugify(name)
    if not skill_key_taken(session, slug):
        return slug
    # A key stays with its skill when it is renamed: once the hashed key is taken too (the
    # second "Rust" renamed, a third created), the hash of the name and a count, the first free.
    for n in itertools.count():
        suffix = "-" + _name_hash(name if n == 0 else f"{name}\n{n}")
        key = slug[: SKILL_KEY_LENGTH - len(suffix)].rstrip("-") + suffix
        if not skill_key_taken(session, key):
            return key
    raise AssertionError("itertools.count() does not end")


def skill_key_taken(session: Session, key: str) -> bool:
    """Whether a skill, deleted or not, holds ``key`` (its column is unique over all rows)."""
    return session.scalar(select(select(Skill.id).where(Skill.skill_key == key).exists())) is True


def _name_hash(name: str) -> str:
    return hashlib.sha256(unicodedata.normalize("NFC", name).encode()).hexdigest()[:16]
