"""`rag bench crash` counts what it claims: its check, run against the service (fake model),
finds nothing after honest writes and names each fault slipped in behind its back (an old
write applied again, an acknowledged write lost, a text never sent); its chunk reference is
the service's own; and one real round runs end to end."""

import random
from collections import defaultdict
from pathlib import Path

import pytest

from rag.bench.crash import NAME, Texts, Write, _check, _mismatched_references, _plan, run_crash
from rag.settings import Settings
from tests.helpers import FakeEmbedder, client_for

NO_SCIFACT = Path("no-scifact")  # the corpus's paragraphs, then


def _write(c, w: Write) -> None:  # type: ignore[no-untyped-def]
    path = f"/collections/{NAME}/documents"
    if w.text is None:
        r = c.delete(f"{path}/{w.doc_id}")
    else:
        body = {"doc_id": w.doc_id, "text": w.text, "title": f"Crash note {w.doc_id}"}
        r = c.post(path, json=body) if w.kind.startswith("new") else c.put(f"{path}/{w.doc_id}", json=body)
    assert r.status_code < 300, r.text
    w.outcome, w.answer = "acked", f"{r.status_code} {r.text}"
    w.chunks = r.json().get("chunks") if r.status_code in (200, 201) else None


def test_the_check_finds_nothing_after_honest_writes_and_names_each_fault(built: Settings):
    texts = Texts(built, NO_SCIFACT, sync_chars=100_000, embedder=FakeEmbedder())
    present: dict[str, str] = {}
    history: dict[str, set[str]] = defaultdict(set)
    with client_for(built) as c:
        assert c.post("/collections", json={"name": NAME}).status_code == 201
        plan = [Write(f"d{i}", "new-small", texts.new(f"d{i}", big=False)) for i in range(5)]
        plan += [Write("d0", "put-small", texts.new("d0", big=False)), Write("d1", "delete", None),
                 Write("d2", "put-small", texts.new("d2", big=False))]
        plan[-1].outcome = "unacked"  # cut off by the kill: it may or may not land; here it did not
        for w in plan[:-1]:
            _write(c, w)
        assert _mismatched_references(plan, texts) == []  # the reference chunks are the service's
        assert _check(c, texts, present, history, plan, {}) == []
        assert sorted(present) == ["d0", "d2", "d3", "d4"]

        old_d0 = plan[0].text
        faults = [Write("d0", "put-small", old_d0),  # d0's first text applied again after its replacement
                  Write("d3", "delete", None),  # d3 lost
                  Write("d4", "put-small", "A text the bench never sent, about krill and sea ice.")]
        for w in faults:
            _write(c, w)
        issues = _check(c, texts, present, history, [], {})
        assert {(i["doc_id"], i["kind"]) for i in issues} == {("d0", "twice"), ("d3", "lost"), ("d4", "partial")}
        assert _check(c, texts, present, history, [], {}) == []  # counted once: the model follows what is there


def test_a_202_whose_document_holds_its_earlier_text_is_lost(built: Settings):
    texts = Texts(built, NO_SCIFACT, sync_chars=100_000, embedder=FakeEmbedder())
    present: dict[str, str] = {}
    history: dict[str, set[str]] = defaultdict(set)
    with client_for(built) as c:
        assert c.post("/collections", json={"name": NAME}).status_code == 201
        first = Write("x", "new-small", texts.new("x", big=False))
        _write(c, first)
        late = Write("x", "put-big", texts.new("x", big=False), outcome="acked", answer="202 {}")  # never ran
        [issue] = _check(c, texts, present, history, [first, late], {})
        assert (issue["doc_id"], issue["kind"]) == ("x", "lost")


def test_the_plan_edits_only_present_documents_with_distinct_texts(built: Settings):
    texts = Texts(built, NO_SCIFACT, sync_chars=600, embedder=FakeEmbedder())
    live = {"old"}
    plan = _plan(random.Random(3), set(live), 60, texts, 1)
    sent = [w.text for w in plan if w.text is not None]
    assert len(set(sent)) == len(sent)
    for w in plan:
        assert (w.doc_id in live) != w.kind.startswith("new"), w
        (live.discard if w.kind == "delete" else live.add)(w.doc_id)
        if w.text is not None:
            assert (len(w.text) > 600) == w.kind.endswith("big")


@pytest.mark.slow
@pytest.mark.model
def test_one_real_round_under_a_sigkill(tmp_path: Path, corpus_dir: Path):
    from rag.ingest.build import build_index

    settings = Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index")
    build_index(settings)
    result = run_crash(settings, rounds=1, writes=12, seed=1, sync_chars=1500, scifact=NO_SCIFACT, log=lambda m: None)
    [row] = result["rounds"]
    assert row["kill_at_s"] == 4.5  # seed 1: 4.5 s into writes that take ~5 s
    assert row["acked"] + row["unacked"] + row["refused"] + row["unsent"] == 12
    assert row["acked"] >= 1 and row["reference_mismatches"] == []
    assert (row["lost"], row["twice"], row["partial"], row["refused"]) == (0, 0, 0, 0), result["issues"]
