"""The certification gates, and the audit's second look at the duplicate gate.

A skill is certified only if every L0/L1 rule passes, its description has at least eight
words, and no certified skill's embedding is near-identical (cosine >= 0.95). The gate's
inputs about other skills (their stored vectors and statuses) are not signed, so every
audit puts each certified skill through the gate again from the signed texts
(:func:`gates_rechecked`): ``embedding-mismatch`` and ``certified-near-duplicate``.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import Text, Uuid

from models.canonical import strict_json_loads
from models.certificates import issued_at
from models.chain import history
from models.chain_verification import HEAD_FINDINGS, head_drift
from models.constitution import L0, L1, evaluate, visible
from models.embeddings import Embedder, cosine
from models.entities import EntityType, Skill, SkillStatus, governed_content
from models.registry import EMBEDDED_TEXT, embedding_text, readings, rule_subject, skill_vectors
from models.signing import KeyRing

MIN_DESCRIPTION_WORDS = 8
DUPLICATE_SIMILARITY = 0.95
# A stored vector is float4: read back, it is the one computed from its text to within rounding
# (cosine 1 - 1e-7 or so); a vector changed outside Plant, or made by another embedder, is far off.
EMBEDDING_MATCH = 0.9999


def certification_gates(session: Session, skill: Skill, *, keyring: KeyRing, embedder: Embedder,
                        content: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every failed gate (not just the first), and the blocking duplicate if any: of ``skill``
    as it is in memory (its vectors computed by the caller: ``models.registry.embed_text_of``),
    or of ``content``, one of its versions as signed (its vectors computed here from that
    version's text)."""
    failed: list[dict[str, Any]] = []
    subject = rule_subject(session, skill, keyring=None, content=content)  # a skill's rules read no other entity
    broken = [*evaluate(subject, L0).violations, *evaluate(subject, L1).violations]
    if broken:
        failed.append({"gate": "constitution", "detail": "rules not satisfied", "rules": broken})
    judged: Any = skill if content is None else _as_signed(skill.id, content, embedder)
    words = description_words(judged.description if isinstance(judged.description, str) else None)
    if words < MIN_DESCRIPTION_WORDS:
        failed.append({"gate": "description-length", "detail": f"{words} words; at least {MIN_DESCRIPTION_WORDS} required"})
    duplicate = nearest_certified_duplicate(session, judged, keyring=keyring, embedder=embedder)
    if duplicate is not None:
        failed.append({"gate": "near-duplicate", "detail": f"too similar to certified skill {duplicate['name']}", "duplicate": duplicate})
    return failed, duplicate


def _as_signed(skill_id: uuid.UUID, content: dict[str, Any], embedder: Embedder) -> Any:
    """The skill as a version's content signed it, for the gates: its id, text and the vectors of that text."""
    text_of = SimpleNamespace(entity_type_value=EntityType.SKILL,
                              **{name: content.get(name) for name in ("name", *EMBEDDED_TEXT[EntityType.SKILL])})
    embedding, reading_embedding = skill_vectors(embedding_text(text_of), embedder)
    return SimpleNamespace(id=skill_id, embedding=embedding, reading_embedding=reading_embedding, **vars(text_of))


def description_words(description: str | None) -> int:
    """The words of a description, as the length gate counts them: its runs between whitespace
    that hold a character that shows (:func:`models.constitution.visible`) and is not
    punctuation (a letter, a digit, a symbol such as an emoji). A run of characters that draw
    nothing (U+200B, the Hangul filler) or of punctuation alone (``-``) is no word: seven of
    them made a one-word description pass for eight words."""
    return sum(1 for run in (description or "").split() if any(
        visible(c) and not unicodedata.category(c).startswith("P") for c in run))


def nearest_certified_duplicate(session: Session, skill: Skill, *, keyring: KeyRing, embedder: Embedder) -> dict[str, Any] | None:
    """The certified skill nearest to ``skill``, when it is a near-duplicate; exact, never
    approximate. Ordered by distance over the table itself, the planner may serve the
    ``LIMIT 1`` from the HNSW index, which finds its ``ef_search`` (40) nearest skills of
    any status and only then keeps the certified ones: forty drafts nearer than a certified
    duplicate hid it, and the copy was certified. A materialized CTE is read whole, so every
    certified skill is compared (a sort over the certified ones alone).

    Other skills' stored vectors and statuses are not signed: they only find candidates (with
    :data:`CANDIDATE_MARGIN` for float4's rounding; a zero vector's NaN distance is none), and
    each is confirmed from signed content: certified by its signed head version
    (:func:`_certified_by_signed_head`), and the vector of that version's text near
    ``skill``'s. So a status or a vector changed through SQL makes Plant sign no rejection
    (their audit findings say so).

    A text spelled with letters drawn alike (Cyrillic ``о`` for ``o``, fullwidth letters) is
    also compared as it reads: when its :func:`models.lookalikes.skeleton` is not the text,
    the vector of the skeleton finds candidates too. Either way each candidate is also
    compared as it reads (:func:`reads_alike`), and found by its stored ``reading_embedding``
    as well as its ``embedding``: a plain copy of a look-alike spelling certified first is
    refused as the look-alike copy of a plain one is."""
    if skill.embedding is None:
        return None
    mine = [float(x) for x in skill.embedding]
    mine_read = None if skill.reading_embedding is None else [float(x) for x in skill.reading_embedding]
    near = _certified_candidates(session, skill.id, mine, mine_read)
    if not near:
        return None
    loaded = session.scalars(select(Skill).where(Skill.id.in_(near)).execution_options(populate_existing=True)).all()
    others = _certified_by_signed_head(session, list(loaded), keyring)
    theirs = embedder.embed([embedding_text(other) for other in others])
    theirs_read = _read_vectors(others, embedder)
    scored = [(reads_alike(mine, mine_read, vector, theirs_read.get(other.id, vector)), other)
              for other, vector in zip(others, theirs, strict=True)]
    best = max(scored, key=lambda pair: pair[0], default=None)
    if best is None or not best[0] >= DUPLICATE_SIMILARITY:
        return None
    similarity, other = best
    return {"id": str(other.id), "name": other.name, "similarity": round(similarity, 6)}


def _certified_candidates(session: Session, skill_id: uuid.UUID, mine: list[float], mine_read: list[float] | None) -> list[uuid.UUID]:
    """The certified skills other than ``skill_id`` whose stored vectors (``embedding``, and
    ``reading_embedding`` where their text has a skeleton of its own) are near ``mine`` or
    ``mine_read`` (the vector of its skeleton, when that is not its text), nearest first.
    LEAST passes over a NULL ``reading_embedding``'s NULL distance."""
    distance = func.least(*(stored.cosine_distance(vector) for stored in (Skill.embedding, Skill.reading_embedding)
                            for vector in (mine, mine_read) if vector is not None))
    certified = (
        select(Skill.id, distance.label("distance"))
        .where(Skill.status == SkillStatus.CERTIFIED.value, Skill.id != skill_id, Skill.embedding.is_not(None))
        .cte("certified").prefix_with("MATERIALIZED")
    )  # each row's distance, not its vector: a few bytes a skill to keep, under the lock every certification waits on
    return list(session.scalars(select(certified.c.id).where(
        certified.c.distance <= 1.0 - DUPLICATE_SIMILARITY + CANDIDATE_MARGIN).order_by(certified.c.distance)).all())


def reads_alike(mine: list[float], mine_read: list[float] | None, theirs: list[float], theirs_read: list[float]) -> float:
    """How near two skills' texts are, for the duplicate gate and the audit's second look alike:
    the cosine of their texts' vectors, or that of their skeletons' vectors if higher
    (``mine_read`` is None when the first text is its own skeleton; ``theirs_read`` is the
    other's text's vector then)."""
    return max(cosine(mine, theirs), cosine(mine if mine_read is None else mine_read, theirs_read))


def _read_vectors(skills: Sequence[Any], embedder: Embedder) -> dict[uuid.UUID, list[float]]:
    """The vector of the skeleton of each of ``skills`` whose skeleton is not its text (any
    other reads as its text's vector): no embedding for a text the skeleton leaves as it is."""
    changed = readings({skill.id: embedding_text(skill) for skill in skills})
    return dict(zip(changed, embedder.embed(list(changed.values())), strict=True)) if changed else {}


def _certified_by_signed_head(session: Session, skills: Sequence[Skill], keyring: KeyRing) -> list[Any]:
    """Those of ``skills`` whose signed head version certifies them, as that version reads: the
    row, when it is its signed head; else, when only the row drifted from its chain (edited
    outside Plant, its head pointer moved), the chain's newest version, whose hash, link and
    signature verify (a certified original edited through SQL still blocks its copies). A
    chain whose newest version does not verify certifies nothing."""
    drift = head_drift(session, [(skill, governed_content(skill)) for skill in skills], keyring)
    found: list[Any] = []
    for skill in skills:
        finding = drift.get(skill.id)
        if finding is None:
            content: Any = {name: getattr(skill, name) for name in ("status", "name", *EMBEDDED_TEXT[EntityType.SKILL])}
        elif finding.code in HEAD_FINDINGS:
            try:
                content = strict_json_loads(bytes(history(session, entity_id=skill.id)[-1].content))
            except ValueError:
                continue
        else:
            continue
        if isinstance(content, dict) and content.get("status") == SkillStatus.CERTIFIED.value:
            found.append(SimpleNamespace(id=skill.id, entity_type_value=EntityType.SKILL,
                                         **{name: content.get(name) for name in ("name", *EMBEDDED_TEXT[EntityType.SKILL])}))
    return found


@dataclass(frozen=True)
class GateFinding:
    """A certified skill the duplicate gate, checked again by the audit, would not pass."""

    skill_id: uuid.UUID
    code: str
    detail: str


# The other certified skills near each audited vector, by their stored vectors, compared
# exactly: a nested loop over the certified skills, no index (see nearest_certified_duplicate).
# Candidates only, with a margin for float4's rounding: each is confirmed from signed content.
_NEAR_CERTIFIED = text("""
    WITH audited AS MATERIALIZED (
        SELECT audited.id, CAST(audited.vector AS vector) AS vector
        FROM unnest(:ids, :vectors) AS audited (id, vector)
    )
    SELECT audited.id, other.id
    FROM audited JOIN skills AS other
      ON other.status = :certified AND other.embedding IS NOT NULL AND other.id <> audited.id
    WHERE LEAST(other.embedding <=> audited.vector, other.reading_embedding <=> audited.vector) <= :distance
""").bindparams(bindparam("ids", type_=ARRAY(Uuid())), bindparam("vectors", type_=ARRAY(Text())))
CANDIDATE_MARGIN = 1e-4
# Audited vectors per statement: each compares its few with every certified skill, so one
# statement stays far below the statement timeout (50 against 250,000 certified skills: 12.5
# million pairs, about 3 s), however many certified skills there are.
PAIRS_PER_STATEMENT = 50
# Reported only at or above this: the gate let through every pair below 0.95 by its own
# arithmetic (float4 vectors; a learned model embeds a batch with padding), so a pair the
# audit computes a hair above 0.95 may be one the gate rightly passed. Errs toward silence.
RECHECK_SIMILARITY = DUPLICATE_SIMILARITY + 1e-5

EMBEDDING_MISMATCH = "embedding-mismatch"
EMBEDDING_MISMATCH_DETAIL = (
    "the stored embedding (or that of what the text reads as, where letters of other scripts are drawn as Latin ones) "
    "is not the one the configured embedder computes from the signed name, category and description (changed outside "
    "Plant, made by another embedder, or stored before migration 0026 kept the second): the duplicate gate compares "
    "other skills with it")


def gates_rechecked(session: Session, skills: Sequence[Any], *, keyring: KeyRing, embedder: Embedder) -> list[GateFinding]:
    """The audit's second look at the duplicate gate of each certified skill in ``skills``
    (rows the caller's chain checks found to be their signed head versions), from signed
    content alone.

    The gate compares a skill being certified with the stored vectors of the certified ones,
    and those are not signed content. Changed through SQL (nulled, say) while a copy was
    certified, then put back, they left the copy certified with nothing to show for it.

    Only skills whose row is their signed head version (it hashes, links, verifies with a
    trusted key, and the row equals it: the caller's check for ``skills``,
    :func:`models.chain_verification.head_drift` for their partners) take part, on either side of a pair: a row edited outside Plant has its own finding, and never makes
    another skill look like a duplicate. While it stays edited, a pair it belongs to is not
    reported; restored, the pair is.

    - ``embedding-mismatch``: the stored vector is not what the configured embedder computes
      from the skill's signed text: changed outside Plant, or made by another embedder (then
      every certified skill shows it; ``plant entity restore`` recomputes it).
    - ``certified-near-duplicate``: the skill was certified after another certified skill it
      is a near-duplicate of (cosine >= 0.95 between the vectors of their signed texts, with
      :data:`RECHECK_SIMILARITY`'s margin): the gate would have refused it. Candidates are
      found by the others' stored vectors, and each is confirmed from its signed text, so a
      stored vector made to look like another's accuses no one; it is that skill's own
      ``embedding-mismatch``. The partner certified first is not reported; when their
      certificates do not tell which came first (one without an ``issued_at``, or the same
      one), each is. As in the gate, a skill whose text has a skeleton of its own (letters
      drawn alike) is also compared as it reads: its skeleton's vector finds candidates and
      is compared with theirs (:func:`reads_alike`). A text the skeleton leaves as it is
      (all ASCII ones, most) costs nothing more.

    Every certified skill is compared with every other: the cost grows with the square of
    their number (README, "Certification").
    """
    audited = [skill for skill in skills if skill.status == SkillStatus.CERTIFIED.value]
    if not audited:
        return []
    vectors = dict(zip((skill.id for skill in audited), embedder.embed([embedding_text(skill) for skill in audited]), strict=True))
    read = _read_vectors(audited, embedder)  # as the gate: a skeleton's vector only where it is not the text
    findings = _embedding_mismatches(session, audited, vectors, read)
    pairs = {*_near_certified_pairs(session, audited, vectors),
             *_near_certified_pairs(session, [skill for skill in audited if skill.id in read], read)}
    known = {skill.id: skill for skill in audited}
    others = _signed_partners(session, {other for _, other in pairs} - set(known), keyring)
    known.update((skill.id, skill) for skill in others)
    vectors.update(zip((skill.id for skill in others), embedder.embed([embedding_text(skill) for skill in others]), strict=True))
    read.update(_read_vectors(others, embedder))
    for skill_id, other_id in sorted(pairs):
        if (finding := _near_duplicate(known[skill_id], known.get(other_id), vectors, read)) is not None:
            findings.append(finding)
    return findings


def _embedding_mismatches(session: Session, audited: Sequence[Any], vectors: dict[uuid.UUID, list[float]],
                          read: dict[uuid.UUID, list[float]]) -> list[GateFinding]:
    """``embedding-mismatch`` for each of ``audited`` whose stored vectors are not its text's
    (``read``: the vectors of the skeletons that are not their texts)."""
    stored = {skill_id: (embedding, reading) for skill_id, embedding, reading in session.execute(
        select(Skill.id, Skill.embedding, Skill.reading_embedding).where(Skill.id.in_([s.id for s in audited])))}
    return [GateFinding(skill.id, EMBEDDING_MISMATCH, EMBEDDING_MISMATCH_DETAIL) for skill in audited
            if stored_vectors_differ(*stored.get(skill.id, (None, None)), vectors[skill.id], read.get(skill.id))]


def _near_certified_pairs(session: Session, audited: Sequence[Any],
                          vectors: dict[uuid.UUID, list[float]]) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(audited skill, other certified skill) pairs near by the other's stored vector, the
    candidates: :data:`PAIRS_PER_STATEMENT` audited vectors a statement."""
    pairs: list[tuple[uuid.UUID, uuid.UUID]] = []
    for start in range(0, len(audited), PAIRS_PER_STATEMENT):
        part = audited[start : start + PAIRS_PER_STATEMENT]
        pairs += [(audited_id, other_id) for audited_id, other_id in session.execute(_NEAR_CERTIFIED, {
            "ids": [skill.id for skill in part], "vectors": [str(list(vectors[skill.id])) for skill in part],
            "certified": SkillStatus.CERTIFIED.value, "distance": 1.0 - DUPLICATE_SIMILARITY + CANDIDATE_MARGIN,
        })]
    return pairs


def _signed_partners(session: Session, wanted: set[uuid.UUID], keyring: KeyRing) -> list[Any]:
    """Those of the ``wanted`` skills that are certified by their signed head version, which
    their row, read as stored now (not as a copy the session may hold), still equals."""
    if not wanted:
        return []
    loaded = session.scalars(select(Skill).where(Skill.id.in_(sorted(wanted))).execution_options(populate_existing=True))
    return _signed_certified(session, list(loaded), keyring)


def _near_duplicate(skill: Any, other: Any, vectors: dict[uuid.UUID, list[float]],
                    read: dict[uuid.UUID, list[float]]) -> GateFinding | None:
    """``certified-near-duplicate`` for ``skill`` when ``other`` (None: its row is not its
    signed head, its own findings say so) is near by their signed texts, judged as the gate
    judges (:func:`reads_alike`; ``read``: the vectors of the skeletons that are not their
    texts), and was not certified after it."""
    if other is None:
        return None
    plain = cosine(vectors[skill.id], vectors[other.id])
    similarity = reads_alike(vectors[skill.id], read.get(skill.id), vectors[other.id], read.get(other.id, vectors[other.id]))
    if similarity < RECHECK_SIMILARITY:
        return None  # near only by the other's stored vector (its own embedding-mismatch), or not near enough
    issued, first = issued_at(skill.certificate), issued_at(other.certificate)
    if issued is not None and first is not None and issued < first:
        return None  # certified first: the later one is the one the gate should have refused
    order = (f"certified at {issued.isoformat()}, after it ({first.isoformat()})" if issued is not None
             and first is not None and issued > first else "certified at a time its certificates do not tell apart")
    return GateFinding(skill.id, "certified-near-duplicate", (
        f"a near-duplicate (cosine {similarity:.6f} >= {DUPLICATE_SIMILARITY}, between the vectors of their signed "
        f"texts{'' if similarity == plain else ' as they read, letters drawn alike taken for the Latin ones'}) of certified "
        f"skill {other.name} ({other.id}), {order}: the duplicate gate refuses such a certification"))


def _signed_certified(session: Session, skills: Sequence[Any], keyring: KeyRing) -> list[Any]:
    """Those of ``skills`` that are certified by their signed head version, which their row
    still equals (the head hashes, links and verifies with a trusted key)."""
    drift = head_drift(session, [(skill, governed_content(skill)) for skill in skills], keyring)
    return [skill for skill in skills if skill.id not in drift and skill.status == SkillStatus.CERTIFIED.value]


def embedding_differs(stored: Any, vector: list[float]) -> bool:
    """Whether a stored vector is not ``vector``, the one computed from its text, float4's
    rounding aside."""
    return stored is None or cosine([float(x) for x in stored], vector) < EMBEDDING_MATCH


def stored_vectors_differ(stored: Any, stored_read: Any, vector: list[float], read: list[float] | None) -> bool:
    """Whether a skill's stored ``embedding`` and ``reading_embedding`` are not ``vector`` and
    ``read``, those computed from its text and its skeleton (``read`` None: the text reads as
    written, and no reading vector is stored)."""
    return embedding_differs(stored, vector) or (
        stored_read is not None if read is None else embedding_differs(stored_read, read))


def certified_embedding_drift(skill: Any, embedder: Embedder) -> GateFinding | None:
    """``embedding-mismatch`` for a certified skill whose stored vector is not its text's,
    as the audit reports it (:func:`gates_rechecked`); None otherwise, and for any other entity."""
    if not isinstance(skill, Skill) or skill.status != SkillStatus.CERTIFIED.value:
        return None
    if not stored_vectors_differ(skill.embedding, skill.reading_embedding, embedder.embed([embedding_text(skill)])[0],
                                 _read_vectors([skill], embedder).get(skill.id)):
        return None
    return GateFinding(skill.id, EMBEDDING_MISMATCH, EMBEDDING_MISMATCH_DETAIL)
