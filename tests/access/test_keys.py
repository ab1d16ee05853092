"""The key store: secrets shown once and stored as hashes, validation, revocation seen by
another process within a second, concurrent writers, expiry, damaged files."""

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.access import keys as keys_module
from rag.access.keys import CHECK_EVERY, ROLES, Key, KeyStore
from rag.errors import BadQueryError, ConflictError, NotFoundError, StorageError

REPO = Path(__file__).resolve().parents[2]

# a helper process that makes and revokes keys on request, answering each line once the
# change is on disk: "create NAME" -> the secret, "revoke NAME" -> "ok"
HELPER = """
import sys
from pathlib import Path
from rag.access.keys import KeyStore
store = KeyStore(Path(sys.argv[1]))
for line in sys.stdin:
    verb, name = line.split()
    print(store.create(name, "reader")[1] if verb == "create" else (store.revoke(name), "ok")[1], flush=True)
"""

# makes COUNT keys named PREFIX-i, each with its own read-modify-write
MAKER = """
import sys
from pathlib import Path
from rag.access.keys import KeyStore
store = KeyStore(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    store.create(f"{sys.argv[2]}-{i}", "writer")
"""


def keys_file(index: Path) -> Path:
    return index / "access" / "keys.json"


def test_secret_shown_once_only_its_hash_stored(tmp_path: Path):
    store = KeyStore(tmp_path)
    key, secret = store.create("ci-reader", "reader", collections=["notes", "docs"], expires_days=30, rate=5)
    assert secret.startswith("rag_") and len(secret) >= 4 + 43
    assert key == Key(name="ci-reader", role="reader", collections=("notes", "docs"),
                      expires_at=key.expires_at, rate=5.0, created_at=key.created_at)
    assert key.expires_at == pytest.approx(key.created_at + 30 * 86400)
    text = keys_file(tmp_path).read_text()
    assert secret not in text and secret[4:] not in text  # not the secret, nor its random part
    [record] = json.loads(text)["keys"]
    assert record["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert store.lookup(secret) == key
    assert store.lookup(secret + "x") is None and store.lookup("") is None


def test_list_shows_no_secrets_or_hashes(tmp_path: Path):
    store = KeyStore(tmp_path)
    _, first = store.create("a", "reader")
    _, second = store.create("b", "admin", rate=0.5)
    listed = store.list()
    assert [(k.name, k.role, k.collections, k.rate) for k in listed] == [("a", "reader", None, None), ("b", "admin", None, 0.5)]
    shown = repr(listed) + json.dumps([k.as_dict() for k in listed])
    digest = hashlib.sha256(first.encode()).hexdigest()
    assert first not in shown and second not in shown and digest not in shown and "sha256" not in shown


def test_a_fresh_folder_has_no_keys_and_reads_write_nothing(tmp_path: Path):
    store = KeyStore(tmp_path / "index")
    assert store.empty() and store.lookup("rag_x") is None and store.list() == []
    assert not (tmp_path / "index").exists()  # the folder is made on the first write only
    store.create("first", "admin")
    assert not store.empty()
    assert sorted(p.name for p in (tmp_path / "index" / "access").iterdir()) == ["keys.json", "keys.lock"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": ""}, "key name ''"),
    ({"name": "a b"}, "key name 'a b'"),
    ({"name": "x" * 64}, "key name"),
    ({"name": "../etc"}, "key name '../etc'"),
    ({"role": "root"}, "role must be one of reader, writer, admin, got 'root'"),
    ({"collections": ["Notes"]}, "collection name 'Notes'"),
    ({"collections": ["-x"]}, "collection name '-x'"),
    ({"collections": []}, "at least one collection"),
    ({"collections": "notes"}, "not one string"),
    ({"role": "admin", "collections": ["notes"]}, "an admin key covers every collection"),
    ({"expires_days": 0}, "expires_days must be"),
    ({"expires_days": -1}, "expires_days must be"),
    ({"expires_days": float("nan")}, "expires_days must be"),
    ({"expires_days": 1e9}, "expires_days must be"),
    ({"rate": 0}, "rate must be"),
    ({"rate": -2}, "rate must be"),
    ({"rate": float("inf")}, "rate must be"),
])
def test_bad_input_is_refused_and_nothing_written(tmp_path: Path, kwargs: dict, message: str):
    args = {"name": "k", "role": "reader", **kwargs}
    with pytest.raises(BadQueryError, match=message):
        KeyStore(tmp_path).create(**args)
    assert not (tmp_path / "access").exists()


def test_names_are_unique_and_revoke_removes(tmp_path: Path):
    store = KeyStore(tmp_path)
    _, secret = store.create("dup", "writer", collections=["notes", "notes"])
    assert store.list()[0].collections == ("notes",)  # repeats dropped
    with pytest.raises(ConflictError, match="a key named 'dup' exists"):
        store.create("dup", "reader")
    assert store.revoke("dup").name == "dup"
    assert store.lookup(secret) is None and store.empty()  # at once, in the process that revoked
    assert json.loads(keys_file(tmp_path).read_text())["keys"] == []
    with pytest.raises(NotFoundError, match="no key named 'dup'"):
        store.revoke("dup")
    assert store.create("dup", "reader")[0].role == "reader"  # the name is free again


def test_expired_keys_are_still_found_and_say_so(tmp_path: Path):
    store = KeyStore(tmp_path)
    key, secret = store.create("short", "reader", expires_days=0.1 / 86400)  # 0.1 s
    forever, _ = store.create("forever", "reader")
    assert not key.expired(now=key.created_at) and key.expired(now=key.created_at + 0.1)
    time.sleep(0.15)
    found = store.lookup(secret)
    assert found is not None and found.expired()  # the service refuses it and can say why
    assert not forever.expired() and not forever.expired(now=1e12)


def test_another_process_sees_changes_within_a_second(tmp_path: Path):
    """A server's KeyStore keeps answering while another process (the CLI) makes and
    revokes keys: each change shows within 1 s of being written."""
    store = KeyStore(tmp_path)
    assert store.empty()
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(tmp_path)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert helper.stdin is not None and helper.stdout is not None

    def ask(line: str) -> str:
        helper.stdin.write(line + "\n")  # type: ignore[union-attr]
        helper.stdin.flush()  # type: ignore[union-attr]
        return helper.stdout.readline().strip()  # type: ignore[union-attr]

    def seconds_until(condition) -> float:  # type: ignore[no-untyped-def]
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < 2, "not seen within 2 s"
            time.sleep(0.005)
        return time.monotonic() - start

    try:
        waits = []
        for round_ in range(3):
            secret = ask(f"create k{round_}")
            assert secret.startswith("rag_")
            waits.append(seconds_until(lambda s=secret: store.lookup(s) is not None))
            assert ask(f"revoke k{round_}") == "ok"
            waits.append(seconds_until(lambda s=secret: store.lookup(s) is None))
            assert store.empty()
    finally:
        helper.stdin.close()
        assert helper.wait(timeout=30) == 0
    assert max(waits) < 1.0, waits
    assert max(waits) < CHECK_EVERY + 0.2, waits  # the stat interval, plus a read


def test_the_read_path_stats_at_most_every_check_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = KeyStore(tmp_path)
    _, secret = store.create("k", "reader")
    calls = []
    real_stat = keys_module.os.stat
    monkeypatch.setattr(keys_module.os, "stat", lambda *a, **kw: calls.append(1) or real_stat(*a, **kw))
    start = time.monotonic()
    for _ in range(5000):
        assert store.lookup(secret) is not None
        store.empty()
    elapsed = time.monotonic() - start
    assert len(calls) <= 1 + elapsed / CHECK_EVERY + 1, (len(calls), elapsed)


def test_two_processes_creating_at_once_lose_no_key(tmp_path: Path):
    makers = [subprocess.Popen([sys.executable, "-c", MAKER, str(tmp_path), prefix, "20"], cwd=REPO)
              for prefix in ("p", "q")]
    for maker in makers:
        assert maker.wait(timeout=120) == 0
    names = {k.name for k in KeyStore(tmp_path).list()}
    assert names == {f"{p}-{i}" for p in ("p", "q") for i in range(20)}


def test_threads_read_while_one_writes(tmp_path: Path):
    store = KeyStore(tmp_path)
    _, secret = store.create("steady", "reader")
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                assert store.lookup(secret) is not None
                time.sleep(0)
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for i in range(10):
        store.create(f"w{i}", ROLES[i % 3])
    done.set()
    for thread in readers:
        thread.join()
    assert failures == [] and len(store.list()) == 11


@pytest.mark.parametrize("text", [
    "not json",
    "",
    "[]",
    '{"keys": {}}',
    '{"format": 2, "keys": []}',
    '{"format": 1, "keys": [{"name": "a"}]}',
    '{"format": 1, "keys": [{"name": "a", "role": "god", "collections": null, "expires_at": null, "rate": null, '
    '"created_at": 1, "sha256": "' + "0" * 64 + '"}]}',
    '{"format": 1, "keys": [{"name": "a", "role": "reader", "collections": null, "expires_at": null, "rate": null, '
    '"created_at": 1, "sha256": "not-a-hash"}]}',
])
def test_a_damaged_file_is_refused_never_read_as_empty(tmp_path: Path, text: str):
    KeyStore(tmp_path).create("k", "reader")
    keys_file(tmp_path).write_text(text)
    store = KeyStore(tmp_path)
    for call in (store.empty, lambda: store.lookup("rag_x"), store.list, lambda: store.create("x", "reader"),
                 lambda: store.revoke("k")):
        with pytest.raises(StorageError, match=f"{keys_file(tmp_path)} is damaged"):
            call()


def test_a_running_store_refuses_once_the_file_is_damaged_until_it_is_mended(tmp_path: Path):
    store = KeyStore(tmp_path)
    _, secret = store.create("k", "reader")
    good = keys_file(tmp_path).read_text()
    assert store.lookup(secret) is not None
    keys_file(tmp_path).write_text(good[:-20])  # cut short
    time.sleep(CHECK_EVERY + 0.05)
    for _ in range(2):  # and again, without reading the file again
        with pytest.raises(StorageError, match="keys.json is damaged"):
            store.lookup(secret)
        with pytest.raises(StorageError, match="keys.json is damaged"):
            store.empty()
    keys_file(tmp_path).write_text(good)
    time.sleep(CHECK_EVERY + 0.05)
    assert store.lookup(secret) is not None
