"""The job registry (rag.jobs): durable across a new Jobs object (a restart), progress with
its rate and time left, a cancel from another process's Jobs, damaged records skipped,
failed items bounded, retries, and a runner that is gone told from one at work."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag import jobs as jobs_module
from rag.errors import ConflictError, NotFoundError
from rag.jobs import Jobs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_job_survives_a_new_registry_with_every_field(tmp_path: Path):
    jobs = Jobs(tmp_path)
    job = jobs.create("upload", "notes", {"doc_id": "report"}, "writer-a", total=3, owner_id="key-1")
    assert job.id.startswith("job-") and len(job.id) == 28 and job.state == "queued"
    job.start()
    job.progress(2)
    job.item_failed("report", "nothing is left after cleaning")
    job.finish(error="1 document failed")
    again = Jobs(tmp_path).get(job.id)  # another process, or this one restarted
    assert (again.kind, again.target, again.owner, again.owner_id) == ("upload", "notes", "writer-a", "key-1")
    assert (again.state, again.done, again.total, again.unit) == ("failed", 2, 3, "documents")
    assert again.error == "1 document failed" and again.params == {"doc_id": "report"}
    assert [e["item"] for e in again.errors] == ["report"]
    assert again.errors[0]["reason"] == "nothing is left after cleaning"
    assert again.created_at <= again.started_at <= again.finished_at  # type: ignore[operator]
    assert json.loads((tmp_path / "jobs" / f"{job.id}.json").read_text())["id"] == job.id
    assert [j.id for j in Jobs(tmp_path).list()] == [job.id]


def test_listing_is_newest_first_and_unfinished_oldest_first(tmp_path: Path):
    jobs = Jobs(tmp_path)
    first = jobs.create("sync", "a", {}, "cli")
    second = jobs.create("export", "b", {}, "cli")
    done = jobs.create("import", "c", {}, "cli")
    done.finish()
    assert [j.id for j in jobs.list()] == [done.id, second.id, first.id]
    assert [j.id for j in jobs.unfinished()] == [first.id, second.id]


def test_progress_rate_and_time_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clock = [1000.0]
    monkeypatch.setattr(jobs_module.time, "time", lambda: clock[0])
    job = Jobs(tmp_path).create("reembed", "notes", {}, "admin", unit="chunks", total=1000)
    assert job.rate is None and job.seconds_left is None  # not started
    job.progress(100)  # resumed at 100: this run's rate counts from there
    job.start()
    clock[0] += 10
    job.progress(300)
    assert job.rate == pytest.approx(20.0)  # 200 chunks in 10 s
    assert job.seconds_left == pytest.approx(35.0)  # 700 left at 20/s
    view = job.as_dict()
    assert view["rate"] == pytest.approx(20.0) and view["seconds_left"] == pytest.approx(35.0)
    clock[0] += 10
    job.progress(1000)
    job.finish()
    assert job.state == "succeeded" and job.seconds_left is None
    assert Jobs(tmp_path).get(job.id).done == 1000  # the end is always written


def test_progress_is_written_at_most_every_half_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    jobs = Jobs(tmp_path)
    job = jobs.create("sync", "a", {}, "cli", total=1000)
    job.start()
    writes = []
    real = jobs_module.replace_text
    monkeypatch.setattr(jobs_module, "replace_text", lambda path, text: (writes.append(path), real(path, text))[1])
    for n in range(1000):
        job.progress(n)
    assert len(writes) <= 1
    time.sleep(jobs_module.SAVE_EVERY_S + 0.05)
    job.progress(1000)
    assert Jobs(tmp_path).get(job.id).done == 1000


def test_a_cancel_from_another_registry_is_seen_and_kept(tmp_path: Path):
    runner = Jobs(tmp_path).create("sync", "a", {}, "cli", total=10)
    runner.start()
    assert not runner.cancelled
    cancelled = Jobs(tmp_path).cancel(runner.id)  # `rag jobs cancel` in another process
    assert cancelled.cancel_requested and cancelled.state == "running"  # its runner is alive: it stops itself
    runner.progress(3)  # a write of the runner keeps the flag (merged in from disk)
    deadline = time.monotonic() + 2
    while not runner.cancelled:
        assert time.monotonic() < deadline, "the cancel was not seen"
        time.sleep(0.05)
    runner.finish()
    assert Jobs(tmp_path).get(runner.id).state == "cancelled"


def test_a_cancel_too_late_to_stop_the_work_changes_nothing(tmp_path: Path):
    job = Jobs(tmp_path).create("upload", "a", {}, "w", total=1)
    job.start()
    Jobs(tmp_path).cancel(job.id)
    job.progress(1)
    job.finish()
    assert job.state == "succeeded"


def test_a_job_whose_process_is_gone_is_orphaned_and_cancelled_at_once(tmp_path: Path):
    jobs = Jobs(tmp_path)
    job = jobs.create("sync", "a", {}, "cli")
    job.start()
    assert not Jobs(tmp_path).get(job.id).orphaned  # this process runs it
    job.pid = _dead_pid()
    job.touch()
    on_disk = Jobs(tmp_path).get(job.id)
    assert on_disk.orphaned and on_disk.as_dict()["stalled"]
    assert [j.id for j in jobs.unfinished()] == [job.id]
    assert jobs.cancel(job.id).state == "cancelled"  # nobody would see the flag
    job.host = "elsewhere"  # another host's: gone once it has not written for STALE_S
    assert not job.orphaned
    job.updated_at -= jobs_module.STALE_S + 1
    assert job.orphaned


def test_damaged_records_are_skipped_and_a_damaged_one_is_a_not_found(tmp_path: Path, caplog):
    jobs = Jobs(tmp_path)
    good = jobs.create("upload", "a", {}, "w")
    bad_id = "job-" + "0" * 24
    (tmp_path / "jobs" / f"{bad_id}.json").write_text('{"id": "job-0000", "kind": ')
    (tmp_path / "jobs" / ("job-" + "1" * 24 + ".json")).write_text('{"id": "job-' + "1" * 24 + '", "state": "odd"}')
    (tmp_path / "jobs" / "job-x.json").write_text("[]")
    assert [j.id for j in jobs.list()] == [good.id]
    assert "skipping job record" in caplog.text
    with pytest.raises(NotFoundError, match="damaged"):
        jobs.get(bad_id)


@pytest.mark.parametrize("job_id", ["nope", "../../etc/passwd", "job-" + "g" * 24, "job-" + "0" * 24, ""])
def test_bad_and_unknown_ids_are_not_found(tmp_path: Path, job_id: str):
    with pytest.raises(NotFoundError, match="no job with id"):
        Jobs(tmp_path).get(job_id)


def test_failed_items_are_bounded_deduplicated_and_go_when_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobs_module, "MAX_ITEM_ERRORS", 5)
    job = Jobs(tmp_path).create("sync", "a", {}, "cli")
    for n in range(20):
        job.item_failed(f"file{n}.txt", "x" * 5000)
    job.item_failed("file0.txt", "again")  # the same item: its entry, replaced
    job.finish()
    saved = Jobs(tmp_path).get(job.id)
    assert [e["item"] for e in saved.errors] == [f"file{n}.txt" for n in range(5)]
    assert saved.errors[0]["reason"] == "again" and len(saved.errors[1]["reason"]) == jobs_module.MAX_TEXT
    assert saved.errors_dropped == 15 and saved.as_dict()["errors_count"] == 20
    saved.item_retried("file1.txt")
    assert "file1.txt" not in [e["item"] for e in Jobs(tmp_path).get(job.id).errors]


def test_retry_runs_the_failed_items_again_as_a_new_run(tmp_path: Path):
    jobs = Jobs(tmp_path)
    job = jobs.create("upload", "a", {"doc_id": "d"}, "w", total=1)
    with pytest.raises(ConflictError, match="still queued"):
        jobs.retry(job.id)
    job.start()
    job.item_failed("d", "boom")
    job.finish(error="boom")
    again = jobs.retry(job.id)
    assert (again.state, again.runs, again.retrying, again.errors, again.error) == ("queued", 2, ["d"], [], None)
    assert jobs.get(job.id).retrying == ["d"]
    again.start()
    again.progress(1)
    again.finish()
    with pytest.raises(ConflictError, match="no failed items"):
        jobs.retry(job.id)


def test_delete_removes_a_finished_job_only(tmp_path: Path):
    jobs = Jobs(tmp_path)
    job = jobs.create("export", "a", {}, "admin")
    with pytest.raises(ConflictError, match="cancel it first"):
        jobs.delete(job.id)
    job.finish(error="disk full")
    jobs.delete(job.id)
    with pytest.raises(NotFoundError):
        jobs.get(job.id)


def test_old_jobs_that_succeeded_are_pruned_failed_ones_kept(tmp_path: Path):
    jobs = Jobs(tmp_path)
    ok, failed = jobs.create("upload", "a", {}, "w"), jobs.create("upload", "a", {}, "w")
    ok.finish()
    failed.item_failed("d", "boom")
    failed.finish(error="boom")
    assert jobs.prune(now=time.time() + jobs_module.KEEP_S + 1) == [ok.id]
    assert [j.id for j in jobs.list()] == [failed.id]


def test_two_threads_and_a_canceller_never_lose_the_flag(tmp_path: Path):
    job = Jobs(tmp_path).create("sync", "a", {}, "cli", total=10_000)
    job.start()
    stop = threading.Event()

    def work() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            job.progress(n)
            job.touch()

    thread = threading.Thread(target=work)
    thread.start()
    try:
        time.sleep(0.1)
        Jobs(tmp_path).cancel(job.id)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert json.loads((tmp_path / "jobs" / f"{job.id}.json").read_text())["cancel_requested"] is True


def test_create_checks_its_kind_and_params(tmp_path: Path):
    with pytest.raises(ValueError, match="kind"):
        Jobs(tmp_path).create("Upload Things", "a", {}, "w")
    with pytest.raises(TypeError):
        Jobs(tmp_path).create("upload", "a", {"when": object()}, "w")
