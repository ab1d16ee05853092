"""Generations that no two writers share, however many processes write one collection
(the claim), and which versions an intent left by a dead writer may remove (recovery).

A version's rows are keyed by its gen (rag.stores.milvus.versions): two versions under
one gen would share keys, and removing one would remove the other's rows. Milvus has no
compare-and-set, so a writer takes a gen by writing first and reading after:
1. draw a candidate (versions.next_gen: seconds since 2025 and 12 random bits, above
   the process's previous one);
2. record its intent in pending under a key of its own (63 random bits: two intents
   share one with odds ~2**-63), naming the candidate in its versions;
3. read back (Strong) the other intents naming the candidate, as their new version or
   their old one, and the candidate's part 0 (every version has one; it is written
   before the version goes live and removed only after it is replaced);
4. anything found: remove its intent and draw again; else the gen is its own.
Each writer writes before it reads, so of two that drew one candidate the later reader
sees the other's intent: at most one goes on (both may draw again). And a gen with rows
stored is named by an intent (a write in flight, or one left by a crash, until recovery
removes its rows) or is live (its part 0), so no write takes it while any row of it is
there. A gen whose rows are all gone may come back, only to a writer whose clock reads
the second it was drawn in (a clock set back, or a writer past 4096 writes a second)
and with odds 1 in 4096 then; nothing stored names it any more, and a reader process
that still caches one of its chunks by row (rag.stores.milvus.live) would show the old
text for that row of the new version: the one residue, left.

Recovery removes, of the versions a dead writer's intent names, those no document points
to and no other intent names: a writer that lost a claim and died before removing its
intent names the winner's gen, which stays. It leaves the intents of this process's
writes and deletes in flight (IN_FLIGHT), as on a server those younger than RECOVER_AFTER_S.

Milvus Lite serves one process, so the tests (tests/stores/test_milvus_replicas.py) run
two writers as two clients in one process, interleaved at a chosen call (a writer's whole
write between another's intent and its read-back), and as processes that take turns on
the file. Only a Milvus server with several processes at once would show: interleavings
at any point of Milvus's own ordering, not only at client calls, which the argument above
covers as long as a read sees every write acknowledged before it began (Strong
consistency, which every collection here is made with); a recovery by one replica while
another writes (only intents older than RECOVER_AFTER_S, 10 minutes, are taken for a dead
writer's; a write stalled longer than that between its intent and its switch would find
its rows removed: left, as before); and the stamp telling a replica of another's write
(tested with two clients marked shared, in tests/stores/test_milvus_live.py).
"""

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from typing import Any

from rag.errors import StorageError
from rag.stores.milvus import versions
from rag.stores.milvus.client import BATCH, NO_VECTOR, in_batches, quote
from rag.stores.milvus.versions import KEY_BITS, Pointer

TRIES = 16  # draws before a write gives up: each loses with odds ~1/4096 per writer drawing in the same second
IN_FLIGHT: set[int] = set()  # keys of this process's intents whose writes are running: recovery leaves them


def new_id() -> int:
    """An intent's key, or the stamp: 63 random bits (a positive INT64)."""
    return secrets.randbits(63)


def intent(key: int, doc_id: str, touched: list[Pointer | None]) -> dict[str, Any]:
    """A pending row: the versions of `doc_id` a write touches (recovery keeps the live one).
    Its key is in the field `gen` (the layout's name for it since its first version)."""
    return {"gen": key, "doc_id": doc_id, "at": int(time.time()), "_": NO_VECTOR,
            "versions": json.dumps([asdict(v) for v in touched if v is not None])}


def claim(client: Any, names: dict[str, str], drafts: dict[str, tuple[Pointer, Pointer | None]], last: int
          ) -> tuple[dict[str, tuple[int, Pointer]], int]:
    """For each document (doc_id -> its new version, gen not yet set; its live one), a gen
    of its own, its intent recorded: doc_id -> (the intent's key, the new version). Also
    the last gen drawn (the process draws above it next). The keys are in IN_FLIGHT."""
    claimed: dict[str, tuple[int, Pointer]] = {}
    todo, mine = list(drafts), []
    try:
        for _ in range(TRIES):
            tries = {}
            for doc_id in todo:
                last = versions.next_gen(last)
                tries[doc_id] = (new_id(), replace(drafts[doc_id][0], gen=last))
            mine += [key for key, _ in tries.values()]
            IN_FLIGHT.update(mine)
            for batch in in_batches([intent(k, d, [new, drafts[d][1]]) for d, (k, new) in tries.items()], BATCH):
                client.insert(names["pending"], batch)
            held = taken(client, names, {new.gen for _, new in tries.values()}, [k for k, _ in tries.values()])
            todo = [d for d, (_, new) in tries.items() if new.gen in held]
            if todo:
                client.delete(names["pending"], ids=[tries[d][0] for d in todo])
            claimed.update((d, t) for d, t in tries.items() if d not in todo)
            if not todo:
                IN_FLIGHT.difference_update(set(mine) - {key for key, _ in claimed.values()})
                return claimed, last
        raise StorageError(f"no free generation for {todo[0]!r} in {TRIES} draws: retry")
    except BaseException:
        IN_FLIGHT.difference_update(mine)  # intents left stay for recovery
        raise


def taken(client: Any, names: dict[str, str], gens: set[int], own: list[int]) -> set[int]:
    """Of `gens`, those an intent not in `own` names, or whose version has rows (its part 0)."""
    found: set[int] = set()
    others = f" and gen not in [{', '.join(map(str, own))}]" if own else ""
    for batch in in_batches(sorted(gens), 64):
        named = " or ".join(f"versions like {quote(naming(g))}" for g in batch)
        for row in client.query(names["pending"], filter=f"({named}){others}", output_fields=["versions"]):
            found |= {v["gen"] for v in json.loads(row["versions"])}
        parts = client.get(names["parts"], ids=[g << KEY_BITS for g in batch], output_fields=["id"])
        found |= {row["id"] >> KEY_BITS for row in parts}
    return found & gens


def naming(gen: int) -> str:
    """A LIKE pattern of the versions that name `gen` (json.dumps of a Pointer: gen comes first)."""
    return f'%"gen": {gen},%'


def leftovers(rows: Iterable[dict[str, Any]], live: Iterable[Pointer], cutoff: float
              ) -> Iterator[tuple[int, list[Pointer]]]:
    """The intents of writes that died (recorded at or before `cutoff`, not this process's in
    flight), each with the versions recovery removes: of those it names, the ones that no
    document points to and no other intent names. The caller removes those versions, then
    the intent, before it takes the next."""
    pending = [(row, [Pointer(**v) for v in json.loads(row["versions"])]) for row in rows]
    naming_intents: dict[int, int] = {}
    for _, touched in pending:
        for gen in {v.gen for v in touched}:
            naming_intents[gen] = naming_intents.get(gen, 0) + 1
    pointed = {p.gen for p in live}
    for row, touched in pending:
        if row["at"] > cutoff or row["gen"] in IN_FLIGHT:
            continue
        for gen in {v.gen for v in touched}:
            naming_intents[gen] -= 1
        yield row["gen"], [v for v in touched if v.gen not in pointed and not naming_intents[v.gen]]
