"""What a registry write's input must be before it is applied: strings NFC-normalized and
within their columns, no NUL anywhere, ``attributes`` in canonical JSON form, and every
reference checked (an unknown id, a governance agent not active when named, a parent that
would make a loop) as an ``InvalidInput`` naming each bad field at once.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

import unicodedata

from models.canonical import as_jsonb_keeps_it, normalize_text, to_json_tree
from models.constitution import INVISIBLE, visible
from models.entities import (
    ENTITY_MODELS, NO_INDUSTRY_CODE, SKILL_ID_FIELDS, Agent, AgentStatus, EntityType, GovernedEntity, Industry, Skill,
)
from models.entity_locks import refuse_if_tampered
from models.errors import InvalidInput
from models.reference_guards import REFERENCES, deleted_referent
from models.signing import KeyRing



def apply_fields(
    session: Session, entity: GovernedEntity, data: dict[str, Any], *, pending: frozenset[uuid.UUID], signed: bool = False
) -> None:
    """Set fields after checking every reference; all bad fields are reported at once.

    ``data`` holds typed values (ids as UUIDs, skill lists as lists of UUIDs), as the API
    parses them and as :func:`models.repair.restore_entity` reads them back from a version
    (``signed``). A governance agent newly named must be active (:func:`_governor_problem`);
    one named before, or put back by a restore, is not judged again.
    """
    errors: list[dict[str, str]] = []
    for field, value in data.items():
        named = field in REFERENCES and value is not None and value not in pending
        referenced = session.get(ENTITY_MODELS[REFERENCES[field]], value) if named else None
        if named and referenced is None:
            errors.append({"field": field, "message": f"no {REFERENCES[field].value} with id {value}"})
        elif named and not signed and referenced.deleted_at is not None and value != getattr(entity, field):
            errors.append({"field": field, "message": deleted_referent(REFERENCES[field], value)})
        elif field == "parent_id" and value is not None and value != entity.parent_id and (problem := _parent_problem(session, entity, value, signed)):
            errors.append({"field": field, "message": problem})
        elif field == "governance_agent_id" and not signed and (problem := _governor_problem(session, entity, data, pending)):
            errors.append({"field": field, "message": problem})
    skills = {f: _skills(session, data[f], f, errors) for f in SKILL_ID_FIELDS if f in data}
    if not signed:  # a skill newly listed must not be deleted; one listed before stays, as a restore puts it back
        for f, listed in skills.items():
            before = {s.id for s in getattr(entity, SKILL_ID_FIELDS[f])} if entity.version else set()
            errors.extend({"field": f, "message": deleted_referent(EntityType.SKILL, s.id)}
                          for s in listed if s.deleted_at is not None and s.id not in before)
    if errors:
        raise InvalidInput("bad reference fields", errors=errors)
    for field, value in data.items():
        if field in SKILL_ID_FIELDS:
            setattr(entity, SKILL_ID_FIELDS[field], skills[field])
        else:
            setattr(entity, field, value)


def _governor_problem(session: Session, entity: GovernedEntity, data: dict[str, Any], pending: frozenset[uuid.UUID]) -> str | None:
    """Why the governance agent ``data`` names may not be named, if it is newly named and
    not active (an agent naming itself, as it will be after this write). Judged when it is
    named only: a governor retired or suspended later stays its entities' governor
    (README, "The constitution"), and they take another through a write naming it."""
    agent_id = data["governance_agent_id"]
    if agent_id is None or agent_id in pending or agent_id == entity.governance_agent_id:
        return None
    governor = session.get(Agent, agent_id)
    if governor is None:
        return None  # reported as unknown
    status = data.get("status", governor.status) if governor is entity else governor.status
    deleted = data.get("deleted_at", governor.deleted_at) if governor is entity else governor.deleted_at
    if status == AgentStatus.ACTIVE.value and deleted is None:
        return None
    return _not_active(agent_id, status if deleted is None else "deleted")


# pg_advisory_xact_lock(GOVERNOR_LOCK, hashtext(agent id)) orders a write that newly names an agent
# as a governance agent (shared) against one that stands that agent down (exclusive), so the
# agent is active when the naming commits (:func:`governor_fence`).
GOVERNOR_LOCK = int.from_bytes(b"govr", "big")


def governor_fence(session: Session, entity: GovernedEntity, *, content_before: dict[str, Any] | None,
                   content: dict[str, Any], pending: frozenset[uuid.UUID], keyring: KeyRing) -> None:
    """Close the gap between :func:`_governor_problem`'s read and the write's commit.

    A write newly naming a governor takes the agent's lock shared and reads its row again (a
    suspension that committed meanwhile is a 422, as it would have been before), which must be
    its signed head (one set back to active through SQL is ``EntityTampered``: its status is
    not the one its chain signed, as a seat is never decided on such a row); a write
    suspending or retiring an active agent takes it exclusive, so it waits for writes naming
    the agent to commit, and they for it. Each takes the lock last, just before its flush, and
    waits for no lock after it (its row is already locked; the deferred foreign keys only
    key-share the agent, which an entity write's ``FOR NO KEY UPDATE`` admits), so it closes no
    cycle with the row locks taken before it. A row lock ``FOR SHARE`` on the governor would:
    a bulk batch locks agents then teams, a team write its team then the agent it names. A write
    taking both (an agent stood down that names another as its governor) takes them in the
    order of the agents' ids, so two such writes naming each other wait, not deadlock.
    """
    locks: dict[uuid.UUID, str] = {}
    named = content.get("governance_agent_id")
    governor_id = None
    if named is not None and (content_before is None or content_before.get("governance_agent_id") != named):
        agent_id = uuid.UUID(named)
        if agent_id not in pending and agent_id != entity.id:
            governor_id, locks[agent_id] = agent_id, "pg_advisory_xact_lock_shared"
    if isinstance(entity, Agent) and content_before is not None and _serving(content_before) and not _serving(content):
        locks[entity.id] = "pg_advisory_xact_lock"
    for agent_id, function in sorted(locks.items(), key=lambda lock: str(lock[0])):
        _lock_governor(session, agent_id, function)
    if governor_id is None:
        return
    governor = session.get(Agent, governor_id, populate_existing=True)
    if governor is not None:
        refuse_if_tampered(session, governor, keyring)
        if governor.status != AgentStatus.ACTIVE.value or governor.deleted_at is not None:
            raise InvalidInput("bad reference fields", errors=[{
                "field": "governance_agent_id",
                "message": _not_active(governor_id, governor.status if governor.deleted_at is None else "deleted")}])


def _serving(content: dict[str, Any]) -> bool:
    """Whether an agent's content (a version's) may be named a governance agent: active, and
    not deleted (a deleted agent, its status left active, was named: no listing shows it)."""
    return content.get("status") == AgentStatus.ACTIVE.value and content.get("deleted_at") is None


def _not_active(agent_id: uuid.UUID, status: str) -> str:
    return f"agent {agent_id} is {status}: a governance agent must be active when it is named"


def _lock_governor(session: Session, agent_id: uuid.UUID, function: str) -> None:
    session.execute(text(f"SELECT {function}(:lock, hashtext(:agent))"), {"lock": GOVERNOR_LOCK, "agent": str(agent_id)})


# pg_advisory_xact_lock(PARENTS_LOCK, hashtext(table)) serializes re-parenting within one entity
# type, so two writes that would each close half of a cycle cannot both see none.
PARENTS_LOCK = int.from_bytes(b"prnt", "big")


def lock_parents(session: Session, model: type[GovernedEntity]) -> None:
    """Take the re-parenting lock of ``model``'s type, until commit. A write that may re-parent
    takes it before any row lock (:func:`models.registry.update_entity`, a restore): one that
    waited for it holding its entity's row made a cycle with the seat guards' lock order (a
    role changing its skills waits for that row, and the lock's holder for the role)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:lock, hashtext(:table))"),
                    {"lock": PARENTS_LOCK, "table": model.__tablename__})


_ANCESTOR_IS = """
    WITH RECURSIVE up(id, parent_id) AS (
        SELECT id, parent_id FROM {table} WHERE id = :parent
        UNION SELECT t.id, t.parent_id FROM {table} t JOIN up ON t.id = up.parent_id)
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :entity)"""


def _parent_problem(session: Session, entity: GovernedEntity, parent_id: uuid.UUID, signed: bool) -> str | None:
    """Why ``entity`` may not take ``parent_id`` as its parent: none such, or a cycle (the
    parent is the entity or one of its descendants). A parent newly named by a stored entity
    is judged under a lock per entity type, held to commit; ``UNION`` ends the walk on a
    cycle already stored. A new entity takes neither: nothing can name it as parent before
    it commits, so it is no one's ancestor, and its create waits for no re-parenting."""
    kind = entity.entity_type_value.value
    parent = session.get(type(entity), parent_id)
    if parent is None:
        return f"no {kind} with id {parent_id}"
    if not signed and parent.deleted_at is not None:
        return deleted_referent(entity.entity_type_value, parent_id)
    if parent_id == entity.id:
        return f"a {kind} cannot be its own parent"
    if not inspect(entity).persistent:
        return None
    table = type(entity).__tablename__
    lock_parents(session, type(entity))  # taken already by the writes that lock rows first: held twice, released at commit
    if entity.id is not None and session.scalar(text(_ANCESTOR_IS.format(table=table)), {"parent": parent_id, "entity": entity.id}):
        return f"{kind} {parent_id} is below this {kind}: naming it as parent would make a cycle"
    return None


def _skills(session: Session, ids: list[uuid.UUID], field: str, errors: list[dict[str, str]]) -> list[Skill]:
    unique = list(dict.fromkeys(ids))
    found = {s.id: s for s in session.scalars(select(Skill).where(Skill.id.in_(unique)))}
    errors.extend({"field": field, "message": f"no skill with id {i}"} for i in unique if i not in found)
    return [found[i] for i in unique if i in found]


def normalized_input(data: dict[str, Any], model: type[GovernedEntity], *, stored: GovernedEntity | None = None) -> dict[str, Any]:
    """Input as the row stores it and the chain signs it: strings NFC, tags sorted and
    unique, and ``attributes`` in its canonical JSON form all the way down (the signed
    version holds that form; a row holding anything else would not match its head).

    NFC can lengthen a string (U+0958 becomes two code points), so a string checked
    against its column's length before normalizing is checked again after. A name or
    external key that ``stored`` (the entity a change is for) already holds is not judged
    again by :func:`hidden_spelling`: one written before a check was tightened is kept, and
    a change that sends it back unchanged is no 422."""
    out = {}
    for key, value in data.items():
        if key != "attributes" and holds_nul(value):  # attributes: once their nesting is checked, below
            raise nul_refused(key)
        if isinstance(value, str):
            value = normalize_text(value)
            if key in PLAIN_SPELLED and value != getattr(stored, key, None) and (why := hidden_spelling(value)) is not None:
                raise InvalidInput(f"{key} {why}: it would read the same as the {key} without it",
                                   errors=[{"field": key, "message": why}])
            if model is Industry and key == "code" and value == NO_INDUSTRY_CODE and value != getattr(stored, key, None):
                raise reserved_code_refused()
            limit = getattr(getattr(model.__table__.c.get(key), "type", None), "length", None)
            if limit is not None and len(value) > limit:
                raise InvalidInput(f"{key} is {len(value)} characters long once NFC-normalized; at most {limit} fit",
                                   errors=[{"field": key, "message": f"at most {limit} characters after NFC normalization"}])
        elif key == "tags" and value is not None:
            value = sorted({normalize_text(t) for t in value})
        elif key == "attributes" and value is not None:
            value = as_jsonb_keeps_it(to_json_tree(value, "$.attributes"), "$.attributes")
            if holds_nul(value):
                raise nul_refused(key)
        out[key] = value
    return out


def reserved_code_refused() -> InvalidInput:
    """An industry code of ``GEN``: certificates name it for skills with no industry, so an
    industry holding it would share their series (SKILL-GEN-002 the industry's, 001 and 003
    not), and no certificate id would tell which it is. One stored before is kept."""
    why = f"{NO_INDUSTRY_CODE} is reserved: certificates name it for skills with no industry"
    return InvalidInput(f"code {why}", errors=[{"field": "code", "message": why}])


# Fields that tell entities apart (each unique per type): a spelling that reads the same as
# another, differing only by what draws nothing, would pass their unique constraints.
PLAIN_SPELLED = ("name", "external_key")
JOINERS = frozenset("\u200c\u200d")  # ZWNJ and ZWJ: Persian, Indic scripts, emoji sequences
# The blocks whose letters ZWJ and ZWNJ shape: the joining scripts (Arabic, Syriac, N'Ko,
# Mandaic, Mongolian, Phags-pa, Adlam, Hanifi Rohingya, Sogdian...) and the Brahmic ones
# (Devanagari to Sinhala, Tibetan, Myanmar, Baybayin, Khmer, Limbu, Tai Tham to Lepcha,
# Javanese, Cham, Meetei Mayek, Brahmi to Ahom).
# Between two Latin, Cyrillic, Greek or CJK letters they change nothing a reader sees.
JOINING_BLOCKS = ((0x0600, 0x08FF), (0x0900, 0x0DFF), (0x0F00, 0x109F), (0x1700, 0x19FF), (0x1A00, 0x1C4F),
                  (0x1CD0, 0x1CFF), (0xA800, 0xA95F), (0xA980, 0xAAFF), (0xABC0, 0xABFF), (0xFB50, 0xFDFF),
                  (0xFE70, 0xFEFF), (0x10A00, 0x11FFF), (0x1E900, 0x1E95F))
# Blanks drawn where a space would be: a name has U+0020 for that.
SPACE_LIKE = frozenset("\u3164\uffa0\u2800")
KEYCAP_BASES = frozenset("0123456789#*")
TAGS = range(0xE0020, 0xE0080)  # an emoji tag sequence (the flags of Scotland, Wales, England)
# A tag sequence draws a flag only as a black flag, a subdivision code and the cancel tag.
TAG_RUN = re.compile("[\U000e0020-\U000e007f]+")
FLAG_TAGS = re.compile("[\U000e0030-\U000e0039\U000e0061-\U000e007a]{3,6}\U000e007f")
MONGOLIAN_LETTERS = range(0x1820, 0x18AB)
HANGUL_L = (range(0x1100, 0x1160), range(0xA960, 0xA980))  # leading consonants (U+115F, their filler, included)
HANGUL_V = (range(0x1160, 0x11A8), range(0xD7B0, 0xD7C7))  # vowels (U+1160, their filler, included)
HANGUL_T = (range(0x11A8, 0x1200), range(0xD7CB, 0xD7FC))  # trailing consonants
# Bases with a variation a selector U+FE00..U+FE0D picks (StandardizedVariants.txt) beside the
# CJK ideographs and math symbols: Myanmar, Phags-pa, Manichaean, Egyptian hieroglyphs.
VARIANT_BLOCKS = ((0x1000, 0x109F), (0xA840, 0xA87F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F), (0x10AC0, 0x10AFF),
                  (0x13000, 0x1342F))
# Emoji whose category is not a symbol's: double exclamation, ?!, information, wavy dash, part alternation mark.
EMOJI_NOT_SYMBOLS = frozenset("\u203c\u2049\u2139\u3030\u303d")


def _in(c: str, blocks: Any) -> bool:
    return any(low <= ord(c) <= high for low, high in blocks)


def _emoji(c: str) -> bool:
    """Whether ``c`` is an emoji or a symbol that may be drawn as one."""
    return ord(c) >= 0x1F000 or c in EMOJI_NOT_SYMBOLS or unicodedata.category(c) in ("So", "Sm")


def _ignorable_unassigned(c: str) -> bool:
    """Whether ``c`` is a code point Unicode keeps for characters that draw nothing (default
    ignorable) and has not assigned: renderers show nothing for it already."""
    cp = ord(c)
    return unicodedata.category(c) == "Cn" and (cp == 0x2065 or 0xFFF0 <= cp <= 0xFFF8 or 0xE0000 <= cp <= 0xE0FFF)


def _beside_joiners(text: str, i: int, step: int) -> str:
    """The first character from ``i`` on, going ``step``, that is no joiner (a space past the ends)."""
    while 0 <= i < len(text) and text[i] in JOINERS:
        i += step
    return text[i] if 0 <= i < len(text) else " "


def hidden_spelling(text: str) -> str | None:
    """Why ``text`` holds something a reader cannot see, or None: whitespace around it, any
    but a single U+0020 between words, a control character, a format character (U+200B, the
    soft hyphen, U+2060, the marks of direction; ZWJ and ZWNJ only beside a letter of a script
    they shape, or between two emoji, as scripts and emoji sequences use them, never twice in
    a row: a virama's ZWJ may end a word, as Malayalam chillus were spelled; an emoji flag's
    tags, a subdivision code and the cancel tag after a black flag; Mongolian's vowel separator
    after a letter and before one), a default-ignorable code point Unicode has not assigned
    (U+2065, U+FFF0..U+FFF8, U+E0000..U+E0FFF), a blank drawn for a space (the Hangul fillers
    U+3164 and U+FFA0, the blank Braille pattern), or a character that draws nothing on its own
    (``models.constitution.INVISIBLE``) where it shows nothing (:func:`_shows_where`): a
    variation selector after no character it has a variant of (a letter, another selector), a
    combining grapheme joiner that keeps no marks in an order NFC would change, Khmer's
    inherent vowels. "Logistics\u200b", "Logistics ", "Logis\u00adtics" and "Caf\u00e9\ufe0f"
    passed the unique constraint beside "Logistics" and "Caf\u00e9". Text with nothing visible
    is left to the constitution's rules (blank)."""
    if not visible(text):
        return None
    if text != text.strip():
        return "begins or ends with whitespace"
    if "  " in text or any(c.isspace() and c != " " for c in text):
        return "holds whitespace other than single spaces between words"
    for run in TAG_RUN.finditer(text):
        if text[run.start() - 1:run.start()] != "\U0001f3f4" or not FLAG_TAGS.fullmatch(run.group()):
            return f"holds U+{ord(run.group()[0]):04X}, which draws nothing outside an emoji flag's tag sequence"
    for i, c in enumerate(text):
        before, after = text[i - 1] if i else " ", text[i + 1] if i + 1 < len(text) else " "
        if c in JOINERS:
            left, right = _beside_joiners(text, i - 1, -1), _beside_joiners(text, i + 1, 1)
            in_sequence = [x for x in (left, right) if x in "\ufe0f\u20e3" or _emoji(x)]  # VS16 and the keycap end an emoji
            shaped = (before != c and after != c and ord(left) > 0x7F and ord(right) > 0x7F and not right.isspace()
                      and (_in(left, JOINING_BLOCKS) or _in(right, JOINING_BLOCKS) or len(in_sequence) == 2))
            ends_conjunct = c == "\u200d" and unicodedata.category(before) == "Mn" and unicodedata.combining(before) == 9
            if not (shaped or ends_conjunct):
                return f"holds U+{ord(c):04X}, which draws nothing, outside a script or emoji sequence that uses it"
        elif ord(c) in TAGS:
            continue  # judged with its sequence, above
        elif c == "\u180e":  # the Mongolian vowel separator
            if not ((ord(before) in MONGOLIAN_LETTERS or before in "\u180b\u180c\u180d\u180f")
                    and ord(after) in MONGOLIAN_LETTERS):
                return f"holds U+{ord(c):04X}, which draws nothing"
        elif c in SPACE_LIKE:
            return f"holds U+{ord(c):04X}, which draws a blank where a space would be"
        elif unicodedata.category(c) in ("Cc", "Cf") or _ignorable_unassigned(c):
            return f"holds U+{ord(c):04X}, which draws nothing"
        elif c in INVISIBLE and not _shows_where(c, before, after):
            return f"holds U+{ord(c):04X}, which draws nothing"
    return None


def _shows_where(c: str, before: str, after: str) -> bool:
    """Whether ``c`` (of ``INVISIBLE``) is where its script or emoji puts it, and changes what is drawn."""
    if c == "\u115f":  # the leading-consonant filler starts a syllable with no consonant: before its vowel
        return any(ord(after) in block for block in HANGUL_V)
    if c == "\u1160":  # the vowel filler, between a syllable's leading and trailing consonants
        return any(ord(before) in block for block in HANGUL_L) and any(ord(after) in block for block in HANGUL_T)
    if c in "\u180b\u180c\u180d\u180f":  # Mongolian's free variation selectors pick a letter's form
        return ord(before) in MONGOLIAN_LETTERS
    if c == "\u034f":  # the combining grapheme joiner keeps two marks in an order NFC would swap
        first, second = unicodedata.combining(before), unicodedata.combining(after)
        return unicodedata.category(before).startswith("M") and first > second > 0
    if c in "\u17b4\u17b5":  # Khmer's inherent vowels: Unicode has them drawn as nothing
        return False
    if before in KEYCAP_BASES:
        return c in "\ufe0e\ufe0f" and after == "\u20e3"
    if c in "\ufe0e\ufe0f":  # text or emoji presentation
        return _emoji(before)
    if unicodedata.name(before, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return True  # a standardized or an ideographic variation (the IVD's)
    return ord(c) < 0xE0100 and (unicodedata.category(before) in ("Sm", "So") or _in(before, VARIANT_BLOCKS))


def nul_refused(field: str) -> InvalidInput:
    """The 422 for a NUL character in ``field``: the database's own refusal names no field."""
    return InvalidInput(f"{field} holds a NUL character (U+0000), which PostgreSQL cannot store",
                        errors=[{"field": field, "message": "must not contain a NUL character (U+0000)"}])


def nul_path(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (a string, or a list or object of them at any depth) a string, or an
    object's key, holds U+0000, which neither text nor jsonb can hold: ``path`` extended by the
    keys and indexes down to it (``against_digest.kid``, ``tags[2]``), or None for none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if holds_nul(key):
                return inner
            if (found := nul_path(item, inner)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := nul_path(item, f"{path}[{index}]")) is not None:
                return found
    return None


def holds_nul(value: Any) -> bool:
    """Whether ``value`` holds U+0000 anywhere, keys included (:func:`nul_path`)."""
    return nul_path(value) is not None
