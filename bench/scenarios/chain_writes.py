"""Scenario 6, chain writes: PATCH throughput with the signed chain versus without it.

Plant's API (``PATCH /api/v1/genesis/industries/{id}``, a new description each time,
cycling over distinct industries so writers rarely meet on one row) is compared with
:mod:`bench.chainless_app`, the same app with the chain left out (on industries of its
own: its rows drift from their heads, which Plant refuses to write on top of), under the
same gunicorn config, load generator, connections and duration; runs alternate and
medians are compared. No numeric target: the ratio is the price of the chain. Then 16
writers PATCH one industry at once: every answer must be 200 and ``/history`` must show
one linear chain (versions 1..n, each ``prev_link`` the previous ``link_hash``).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import requests

from bench.harness import BenchResult, BenchStack, median_run
from bench.load import LoadResult, run_load
from models.entities import EntityType
from models.registry import create_entity
from models.seed import bootstrap_steward
from models.settings import Settings

TITLE = "Chain writes"
CONNECTIONS = 16
RUNS = 3
WRITERS = 16
BODY = '{"description": "benchmark write %d from client thread %d"}'


def _industries(stack: BenchStack, settings: Settings, count: int) -> list[uuid.UUID]:
    with stack.session(settings) as session:
        steward = bootstrap_steward(session, stack.write_context)
        return [
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=stack.write_context, data={
                "name": f"Benchmark industry {i}", "code": f"B{i:05d}", "governance_agent_id": steward,
                "description": "an industry the benchmark rewrites"}).id
            for i in range(count)
        ]


def _serialized_writes(stack: BenchStack, port: int, entity: uuid.UUID, per_writer: int) -> dict[str, Any]:
    """WRITERS threads each PATCH ``entity`` ``per_writer`` times; check answers and chain."""
    url = f"http://127.0.0.1:{port}/api/v1/genesis/industries/{entity}"
    statuses: list[int] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        with requests.Session() as http:
            for i in range(per_writer):
                response = http.patch(url, json={"description": f"writer {number} write {i}"},
                                      headers=stack.headers, timeout=60)
                with lock:
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    items = requests.get(url + "/history", headers=stack.headers, timeout=60).json()["items"]
    linear = [v["version"] for v in items] == list(range(1, len(items) + 1)) and all(
        later["prev_link"] == earlier["link_hash"] for earlier, later in zip(items, items[1:], strict=False))
    return {"writes": len(statuses), "non_200": sum(s != 200 for s in statuses), "versions": len(items),
            "expected_versions": 1 + WRITERS * per_writer, "linear": linear}


def _summary(results: list[LoadResult]) -> dict[str, float]:
    return {"rps": round(median_run([r.rps for r in results]), 1),
            "p99_ms": round(median_run([r.p99_ms for r in results]), 3),
            "errors": sum(r.errors + r.bad_status for r in results)}


def run(stack: BenchStack, quick: bool) -> list[BenchResult]:
    seconds, entities, per_writer = (3, 64, 3) if quick else (10, 256, 8)
    settings = stack.fresh_database("bench_chain")
    ids = _industries(stack, settings, 2 * entities + 1)
    contended, chain_ids, plain_ids = ids[0], ids[1 : entities + 1], ids[entities + 1 :]
    chain_port, plain_port = stack.free_port(), stack.free_port()
    chain_api = stack.start_api(settings, port=chain_port, name="chain-api")
    plain_api = stack.start_api(settings, port=plain_port, app="bench.chainless_app:create_app()", name="chainless-api")
    paths = {port: [f"/api/v1/genesis/industries/{i}" for i in side] for port, side in
             ((chain_port, chain_ids), (plain_port, plain_ids))}
    headers = {**stack.headers, "Content-Type": "application/json"}

    def load(port: int, duration: float) -> LoadResult:
        return run_load(f"http://127.0.0.1:{port}", paths=paths[port], seconds=duration, connections=CONNECTIONS,
                        method="PATCH", headers=headers, body_format=BODY)

    load(chain_port, 1), load(plain_port, 1)  # warm-up
    chained, plain = [], []
    for _ in range(RUNS):
        chained.append(load(chain_port, seconds))
        plain.append(load(plain_port, seconds))
    serial = _serialized_writes(stack, chain_port, contended, per_writer)
    for process in (chain_api, plain_api):
        stack.stop(process)
    with_chain, without = _summary(chained), _summary(plain)
    serial_ok = serial["non_200"] == 0 and serial["linear"] and serial["versions"] == serial["expected_versions"]
    details = {"entities": entities, "connections": CONNECTIONS, "seconds_per_run": seconds, "runs": RUNS,
               "client": chained[0].client, "with_chain": with_chain, "without_chain": without,
               "raw": {"with_chain": [r.as_dict() for r in chained], "without_chain": [r.as_dict() for r in plain]}}
    return [
        BenchResult.report_only("chain_writes", with_chain["rps"], "writes/s", baseline=without["rps"],
                                ok=with_chain["errors"] == 0 and without["errors"] == 0, details=details),
        BenchResult(f"chain_writes.serialized_{WRITERS}_writers", serial["writes"], "writes", target="every answer HTTP 200, one linear chain",
                    passed=serial_ok, details=serial),
    ]


def markdown(results: list[BenchResult]) -> str:
    details = next((r.details for r in results if r.scenario == "chain_writes"), None)
    serial = next((r.details for r in results if r.scenario.startswith("chain_writes.serialized")), None)
    if not details:
        return ""
    rows = ["| route | writes/s | p99 ms |", "|---|---:|---:|",
            f"| PATCH industry, signed chain (Plant) | {details['with_chain']['rps']:.1f} | {details['with_chain']['p99_ms']:.2f} |",
            f"| PATCH industry, chain left out (`bench/chainless_app.py`) | {details['without_chain']['rps']:.1f} | {details['without_chain']['p99_ms']:.2f} |"]
    text = (f"`{details['client']}`, {details['connections']} connections over {details['entities']} distinct "
            f"industries, {details['seconds_per_run']} s per run, {details['runs']} alternating runs (medians):\n\n"
            + "\n".join(rows) + "\n")
    if serial:
        text += (f"\n{WRITERS} writers on one industry: {serial['writes']} PATCHes, {serial['non_200']} not 200, "
                 f"{serial['versions']} versions (expected {serial['expected_versions']}), "
                 f"linear chain: {'yes' if serial['linear'] else 'no'}.\n")
    return text
