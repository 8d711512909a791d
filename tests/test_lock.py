"""The lake's lock: only a live holder is waited for; what cannot be written fails at once; a
create whose first attempt landed is the taker's own; racing writers on an object store
leave one holder."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from harvester.errors import LakeError, LockHeld
from harvester.lake.local import LocalStore
from harvester.lake.lock import LakeLock
from tests.conftest import race_for_a_stale_lock


def test_a_lock_that_cannot_be_written_fails_at_once_even_when_told_to_wait(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    lock = LakeLock(LocalStore(tmp_path / "not-a-dir"), "_locks/date=2026-11-01")
    with pytest.raises(LakeError) as e:
        lock.acquire(wait=600)  # waited out, this would be ten minutes
    assert not isinstance(e.value, LockHeld) and "cannot write" in str(e.value)


def test_a_live_holder_is_waited_for_then_named(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first, second = LakeLock(store, "_lock"), LakeLock(store, "_lock")
    first.acquire()
    with pytest.raises(LockHeld, match=f"locked by pid {os.getpid()}"):
        second.acquire(wait=0.1)
    first.release()
    second.acquire()
    assert second.held and orjson.loads((tmp_path / "_lock").read_bytes())["pid"] == os.getpid()


def test_a_lock_holding_the_takers_own_token_is_its_own(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lock = LakeLock(store, "_lock")
    store.write("_lock", orjson.dumps(lock._me()))  # a retried create whose first attempt landed
    lock.acquire()
    assert lock.held


def test_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    gone = {"pid": 2**22 + 7, "host": os.uname().nodename, "since": "x", "beat": 0}
    store.write("_lock", orjson.dumps(gone))
    lock = LakeLock(store, "_lock")
    lock.acquire()
    assert lock.held


class RacyStore:
    """An object store as S3 behaves without create-if-absent: between a taker's read and its
    write, another taker's write lands; the read-back tells who holds the lock."""

    local = False
    where = "s3://bucket/lake"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.rival: bytes | None = None

    def read(self, key: str) -> bytes | None:
        return self.data.get(key)

    def write(self, key: str, data: bytes) -> None:
        self.data[key] = data

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def create_exclusive(self, key: str, data: bytes, replacing: bytes | None = None) -> bool:
        if self.data.get(key) != replacing:
            return False
        self.data[key] = data
        if self.rival is not None:  # the rival read "absent" too, and wrote last
            self.data[key], self.rival = self.rival, None
        return True


def test_of_two_racing_writers_on_an_object_store_only_the_last_holds_the_lock() -> None:
    store = RacyStore()
    rival = LakeLock(store, "_lock")  # type: ignore[arg-type]
    store.rival = orjson.dumps(rival._me())
    lock = LakeLock(store, "_lock")  # type: ignore[arg-type]
    with pytest.raises(LockHeld):
        lock.acquire()
    assert not lock.held
    rival.acquire()  # the lock holds the rival's token: it is the rival's
    assert rival.held


def test_threads_of_one_run_taking_one_days_lock_hold_it_one_at_a_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    holding: list[int] = []
    most = 0
    guard = threading.Lock()

    errors: list[BaseException] = []

    def take(n: int) -> None:
        try:
            hold(n)
        except BaseException as e:  # the test asserts there were none
            errors.append(e)

    def hold(n: int) -> None:
        nonlocal most
        for _ in range(20):
            lock = LakeLock(store, "_locks/date=2026-11-01")
            lock.acquire(wait=60)
            with guard:
                holding.append(n)
                most = max(most, len(holding))
            time.sleep(0.001)  # hold it a while, as a fold does
            with guard:
                holding.remove(n)
            lock.release()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and most == 1 and not (tmp_path / "_locks" / "date=2026-11-01").exists()


def test_of_two_takers_that_found_one_stale_lock_only_one_takes_it_over(tmp_path: Path) -> None:
    race_for_a_stale_lock(LocalStore(tmp_path), LocalStore(tmp_path))
