"""The record-store contract, for every backend that runs without an HSM, and the directory
backend's atomicity across threads and processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest

from signer.errors import InvalidRequest, StoreConflict
from signer.store.api import ABSENT, RecordKind, RecordStore
from signer.store.directory import DirectoryRecordStore
from tests.memory_boundary import MemoryRecordStore

Backend = Callable[[Path], RecordStore]
BACKENDS: dict[str, Backend] = {
    "memory": lambda path: MemoryRecordStore(),
    "directory": lambda path: DirectoryRecordStore(path / "store"),
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RecordStore:
    return BACKENDS[request.param](tmp_path)


def test_conditional_writes_and_deletes(store: RecordStore) -> None:
    check_conditional_writes(store, RecordKind.KEY)


def check_conditional_writes(store: RecordStore, kind: RecordKind) -> None:
    """The contract every backend keeps, on a kind that starts empty."""
    assert store.load_all(kind) == {}
    assert store.put(kind, "a1", ABSENT, b"one") == 1
    with pytest.raises(StoreConflict, match="expected generation 0, found 1"):
        store.put(kind, "a1", ABSENT, b"again")
    assert store.put(kind, "a1", 1, b"two") == 2
    with pytest.raises(StoreConflict):
        store.put(kind, "a1", 1, b"stale")
    record = store.load_all(kind)["a1"]
    assert (record.name, record.generation, record.value) == ("a1", 2, b"two")
    with pytest.raises(StoreConflict):
        store.delete(kind, "a1", 1)
    store.delete(kind, "a1", 2)
    with pytest.raises(StoreConflict):
        store.delete(kind, "a1", 2)
    assert store.load_all(kind) == {}


def test_kinds_are_separate_namespaces(store: RecordStore) -> None:
    store.put(RecordKind.KEY, "same", ABSENT, b"key")
    store.put(RecordKind.CSR, "same", ABSENT, b"csr")
    assert store.load_all(RecordKind.KEY)["same"].value == b"key"
    assert store.load_all(RecordKind.CSR)["same"].value == b"csr"
    assert store.load_all(RecordKind.CHANGE) == {}


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 200, "nul\x00"])
def test_unsafe_names_are_refused(store: RecordStore, name: str) -> None:
    with pytest.raises(InvalidRequest, match="record name"):
        store.put(RecordKind.KEY, name, ABSENT, b"v")
    assert store.load_all(RecordKind.KEY) == {}


def _race(root: str, index: int) -> bool:
    try:
        DirectoryRecordStore(Path(root)).put(RecordKind.CHANGE, "c", 1, f"w{index}".encode())
        return True
    except StoreConflict:
        return False


def test_directory_store_lets_one_of_many_processes_win(tmp_path: Path) -> None:
    store = DirectoryRecordStore(tmp_path / "shared")
    store.put(RecordKind.CHANGE, "c", ABSENT, b"start")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        wins = pool.starmap(_race, [(str(tmp_path / "shared"), i) for i in range(8)])
    assert wins.count(True) == 1
    final = store.load_all(RecordKind.CHANGE)["c"]
    assert final.generation == 2 and final.value == f"w{wins.index(True)}".encode()
    assert sorted(p.name for p in (tmp_path / "shared" / "pending-change").iterdir()) == ["c"]
