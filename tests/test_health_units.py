"""Health per service name, and the record store's reachability as the daemon learns it.

Pure decisions (which service reports which problem) and :class:`WatchedStore` over a real
``directory`` store whose folder is moved away and back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from signer.errors import StoreConflict, StoreUnavailable
from signer.service.health import (
    KEY_ADMIN_SERVICE,
    SERVICES,
    WORKERS_SERVICE,
    HealthFacts,
    problems_by_service,
)
from signer.store.api import ABSENT, RecordKind
from signer.store.directory import DirectoryRecordStore
from signer.store.watched import WatchedStore

HEALTHY = HealthFacts(
    hsm_answers=True,
    workers_up=3,
    audit_writable=True,
    profiles_without_key=(),
    workers_configured=3,
    store_problem=None,
)


def failing(facts: HealthFacts) -> dict[str, list[str]]:
    """The services that are NOT_SERVING, with their reasons."""
    return {name: found for name, found in problems_by_service(facts, SERVICES).items() if found}


def test_a_healthy_appliance_serves_every_name() -> None:
    assert failing(HEALTHY) == {}


def test_an_unreachable_store_stops_only_key_changes() -> None:
    facts = HealthFacts(**{**HEALTHY.__dict__, "store_problem": "folder /srv/records is gone"})
    assert list(failing(facts)) == [KEY_ADMIN_SERVICE]
    [reason] = failing(facts)[KEY_ADMIN_SERVICE]
    assert "record store cannot be reached" in reason and "/srv/records" in reason


def test_a_long_store_problem_is_cut() -> None:
    facts = HealthFacts(**{**HEALTHY.__dict__, "store_problem": "x" * 10_000})
    [reason] = failing(facts)[KEY_ADMIN_SERVICE]
    assert len(reason) < 400


def test_a_degraded_pool_is_reported_under_its_own_name_only() -> None:
    facts = HealthFacts(**{**HEALTHY.__dict__, "workers_up": 1})
    assert failing(facts) == {
        WORKERS_SERVICE: [
            "only 1 of 3 HSM workers run; the others are being restarted in the background"
        ]
    }


def test_no_worker_at_all_stops_everything() -> None:
    facts = HealthFacts(**{**HEALTHY.__dict__, "workers_up": 0})
    found = failing(facts)
    assert set(found) == set(SERVICES)
    assert all(reasons == ["no HSM worker process is running"] for reasons in found.values())


def test_the_store_problem_adds_to_what_stops_signing() -> None:
    facts = HealthFacts(
        **{**HEALTHY.__dict__, "audit_writable": False, "store_problem": "PostgreSQL host=db"}
    )
    found = failing(facts)
    assert set(found) == set(SERVICES)
    assert found[""] == ["the audit log cannot be written"]
    assert len(found[KEY_ADMIN_SERVICE]) == 2


def test_watched_store_follows_a_folder_moved_away_and_back(tmp_path: Path) -> None:
    root = tmp_path / "records"
    flips: list[str | None] = []
    store = WatchedStore(DirectoryRecordStore(root), lambda: flips.append(store.problem))
    generation = store.put(RecordKind.KEY, "k1", ABSENT, b"record")
    assert store.problem is None and flips == []

    root.rename(tmp_path / "away")
    with pytest.raises(StoreUnavailable, match=str(root)):
        store.load_all(RecordKind.KEY)
    assert store.problem is not None and str(root) in store.problem
    with pytest.raises(StoreUnavailable, match=str(root)):
        store.put(RecordKind.KEY, "k1", generation, b"changed")
    with pytest.raises(StoreUnavailable, match=str(root)):
        store.require_reachable()
    assert len(flips) == 1, "one report per change, not per failed call"

    (tmp_path / "away").rename(root)
    store.require_reachable()
    assert store.problem is None and len(flips) == 2 and flips[-1] is None
    assert store.load_all(RecordKind.KEY)["k1"].value == b"record"


def test_a_write_conflict_reached_the_store(tmp_path: Path) -> None:
    root = tmp_path / "records"
    store = WatchedStore(DirectoryRecordStore(root))
    store.put(RecordKind.KEY, "k1", ABSENT, b"record")
    root.rename(tmp_path / "away")
    with pytest.raises(StoreUnavailable):
        store.load_all(RecordKind.KEY)
    (tmp_path / "away").rename(root)
    with pytest.raises(StoreConflict):
        store.put(RecordKind.KEY, "k1", ABSENT, b"again")
    assert store.problem is None


def test_a_vanished_folder_is_never_an_empty_store(tmp_path: Path) -> None:
    """An empty folder where the records were is unavailable, not "no keys"."""
    root = tmp_path / "records"
    store = DirectoryRecordStore(root)
    store.put(RecordKind.KEY, "k1", ABSENT, b"record")
    root.rename(tmp_path / "away")
    root.mkdir()
    with pytest.raises(StoreUnavailable, match="check that it is mounted"):
        store.load_all(RecordKind.KEY)
