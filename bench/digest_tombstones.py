"""What deleted entities cost the hourly digest and the incremental audit (tombstones, migration 0018).

Builds ``--entities`` industries × 5 versions on its own embedded stack (:mod:`bench.audit_data`),
stores a first digest, and times ``--runs`` more digests and incremental audits with nothing
changed: the baseline. Then deletes ``--deleted`` of the industries through the registry (a
signed deletion version each), stores the digest that checks those deletions, and times the
same again, now with that many tombstones kept beside the leaves. Prints the medians and
their ratios against the baseline measured in the same run.

    python -m bench.digest_tombstones --entities 20000 --deleted 2000 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from sqlalchemy import text

from bench.audit_data import generate
from bench.harness import BenchStack, median_seconds
from models.entities import EntityType
from models.incremental_audit import audit_since_latest_digest
from models.keys import keyring_from_settings
from models.ledger_store import store_digest
from models.registry import update_entity
from models.seed import bootstrap_steward
from models.embeddings import HashingEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--deleted", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with BenchStack() as stack:
        settings = stack.fresh_database("bench_digest_tombstones")
        keyring = keyring_from_settings(settings)
        with stack.session(settings) as session:
            steward = bootstrap_steward(session, stack.write_context)
        generate(settings, entities=args.entities, versions=5, steward=steward)

        def digest() -> None:
            with stack.session(settings) as session:
                store_digest(session, keyring=keyring)

        def incremental() -> None:
            with stack.session(settings) as session:
                audit_since_latest_digest(session, keyring=keyring, embedder=HashingEmbedder(), sink=[].extend)

        stack.settle(settings)
        digest()  # the first: every chain checked from the genesis
        before = {"digest": median_seconds(digest, args.runs), "incremental": median_seconds(incremental, args.runs)}
        with stack.session(settings) as session:
            doomed = session.scalars(text("SELECT id FROM industries ORDER BY id LIMIT :n"), {"n": args.deleted}).all()
            for industry in doomed:
                update_entity(session, entity_type=EntityType.INDUSTRY, entity_id=industry, ctx=stack.write_context,
                              changes={"deleted_at": dt.datetime.now(dt.UTC)})
        stack.settle(settings)
        start = time.perf_counter()
        digest()  # checks each deletion from its trusted leaf
        checking = time.perf_counter() - start
        after = {"digest": median_seconds(digest, args.runs), "incremental": median_seconds(incremental, args.runs)}
    print(f"the digest that checked {args.deleted} new deletions: {checking:.2f} s")
    for name in before:
        print(f"{name}: {before[name]:.3f} s with no deleted entity, {after[name]:.3f} s with {args.deleted} tombstones "
              f"({after[name] / before[name]:.2f}x; {args.entities} entities x 5 versions, medians of {args.runs})")


if __name__ == "__main__":
    main()
