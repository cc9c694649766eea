"""Generates a large registry for the audit benchmarks with the real chain code.

Industries get ``versions`` chain versions each (created, then description edits),
built with ``models.chain.link_hash``, ``models.canonical.canonical_bytes`` and the real
key ring, so the audit sees exactly what production writes. Rows go in with COPY.
Generation is split over processes; it is setup, not what the benchmark measures.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from models.canonical import canonical_bytes
from models.chain import GENESIS_LINK, link_hash
from models.keys import keyring_from_settings
from models.settings import Settings, libpq_url

VERSION_COLUMNS = "(entity_type, entity_id, version, content, content_hash, prev_link, link_hash, kid, signature, actor)"
INDUSTRY_COLUMNS = "(id, entity_type, external_key, status, name, code, description, version, head_link_hash, tags, attributes, governance_agent_id, constitution_l0, constitution_l1)"
PASSED = '{"passed": true, "violations": [], "warnings": []}'


@dataclass(frozen=True)
class Slice:
    settings: Settings
    start: int
    count: int
    versions: int
    steward: uuid.UUID


def _content(entity_id: uuid.UUID, number: int, description: str, steward: uuid.UUID) -> dict:
    return {
        "id": str(entity_id), "entity_type": "industry", "external_key": None, "status": "active", "deleted_at": None,
        "tags": [], "attributes": {}, "governance_notes": None, "governance_agent_id": str(steward), "parent_id": None,
        "name": f"Bench industry {number}", "code": _code(number), "description": description,
    }


def _code(number: int) -> str:
    digits, n = "", number
    while True:
        n, r = divmod(n, 36)
        digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r] + digits
        if n == 0:
            return "B" + digits.rjust(6, "0")


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _rows(part: Slice) -> Iterator[tuple[list[str], list[list[str]]]]:
    keyring = keyring_from_settings(part.settings)
    for number in range(part.start, part.start + part.count):
        entity_id = uuid.uuid4()
        prev, versions = GENESIS_LINK, []
        for version in range(1, part.versions + 1):
            description = f"Benchmark industry {number}, revision {version}"
            content = canonical_bytes(_content(entity_id, number, description, part.steward))
            digest = hashlib.sha256(content).digest()
            link = link_hash("industry", entity_id, version, prev, digest)
            kid, signature = keyring.sign(link)
            versions.append(["industry", str(entity_id), str(version), content, digest, prev, link, kid, signature, "bench"])
            prev = link
        industry = [str(entity_id), "industry", None, "active", f"Bench industry {number}", _code(number), description,
                    str(part.versions), prev, "{}", "{}", str(part.steward), PASSED, PASSED]
        yield industry, versions


def load_slice(part: Slice) -> int:
    industries, versions = io.StringIO(), io.StringIO()
    for industry, rows in _rows(part):
        industries.write("\t".join(_copy_text(v) for v in industry) + "\n")
        for row in rows:
            versions.write("\t".join(_copy_text(v) for v in row) + "\n")
    url = libpq_url(part.settings.database_url)
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY industries {INDUSTRY_COLUMNS} FROM STDIN") as copy:
            copy.write(industries.getvalue())
        with cursor.copy(f"COPY entity_versions {VERSION_COLUMNS} FROM STDIN") as copy:
            copy.write(versions.getvalue())
    return part.count


def generate(settings: Settings, *, entities: int, versions: int, steward: uuid.UUID, processes: int = 2, start: int = 0) -> int:
    """Insert ``entities`` industries with ``versions`` versions each; returns the count."""
    size = 5_000
    parts = [Slice(settings, start + s, min(size, entities - s), versions, steward) for s in range(0, entities, size)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.map(load_slice, parts))
