"""The record store going away under a running daemon, and coming back, on real stores.

The ``directory`` store's folder is moved away and back; the ``postgresql`` store's server (a
real one from Debian's binaries) is stopped with ``pg_ctl`` and started again. While the store
is away: signing goes on with the key records last verified, KeyAdmin's health is NOT_SERVING,
a key ceremony is refused with UNAVAILABLE naming the store before anything is generated in
the HSM, and ``signer_record_store_up`` is 0. Once it is back, health and ceremonies recover
by themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from pkcs11 import Attribute, ObjectClass

from signer.config import load
from signer.v1 import key_admin_pb2
from tests.conftest import Appliance, MakeAppliance, metric_value
from tests.pg_server import MissingPostgres, PostgresServer, running_postgres
from tests.test_hsm_keys import own_session
from tests.test_key_ceremony import digests, sign

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KEY_ADMIN = "signer.v1.KeyAdmin"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test alone: stopping it must not disturb other tests' stores."""
    try:
        with running_postgres() as server:
            yield server
    except MissingPostgres as exc:
        pytest.fail(str(exc), pytrace=False)


def wait_for(what: str, condition: Callable[[], bool], app: Appliance, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s:\n{app.log()[-4000:]}")
        time.sleep(0.1)


def generate(app: Appliance, label: str) -> key_admin_pb2.GenerateKeyResponse:
    request = key_admin_pb2.GenerateKeyRequest(profile="vaccination", label=label, officer="alice")
    return app.key_admin().GenerateKey(request, timeout=30)


def private_keys(app: Appliance) -> int:
    """Private keys on the token, counted in a session of the test's own."""
    with own_session(load(app.config_path)) as session:
        return len(list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})))


def store_up(app: Appliance) -> float:
    return metric_value(app.metrics_text(), "signer_record_store_up")


def ride_out_an_outage(
    app: Appliance, take_away: Callable[[], object], bring_back: Callable[[], object], named: str
) -> None:
    """Take the store away, check what the daemon does meanwhile, bring it back, check it
    recovers; ``named`` is what the refusal must name."""
    kid = app.signing_key().kid
    assert len(sign(app, kid, digests(4, b"before")).signatures) == 4
    assert app.health(KEY_ADMIN) == SERVING and store_up(app) == 1
    keys_before = private_keys(app)

    take_away()
    try:
        wait_for("KeyAdmin NOT_SERVING", lambda: app.health(KEY_ADMIN) == NOT_SERVING, app)
        assert app.health("") == SERVING
        assert app.health("signer.v1.Signing") == SERVING
        assert store_up(app) == 0
        signed = sign(app, kid, digests(50, b"while the store is away"))
        assert len(signed.signatures) == 50 and signed.kid == kid
        with pytest.raises(grpc.RpcError) as refused:
            generate(app, "while-away")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert named in (refused.value.details() or "")
        assert private_keys(app) == keys_before, "a refused ceremony generated a key"
        # Still away a few refresh intervals later: the refresher keeps the last view.
        time.sleep(2)
        assert app.health(KEY_ADMIN) == NOT_SERVING
        assert len(sign(app, kid, digests(1, b"later")).signatures) == 1
    finally:
        bring_back()

    wait_for("KeyAdmin SERVING again", lambda: app.health(KEY_ADMIN) == SERVING, app)
    assert app.health("") == SERVING and store_up(app) == 1
    reply = generate(app, "after-return")
    assert reply.key.state == "pending" and reply.csr_der
    assert private_keys(app) == keys_before + 1
    assert len(sign(app, kid, digests(4, b"after")).signatures) == 4
    log = app.log()
    # Said once per outage, not a traceback per refresh.
    assert log.count("record store unreachable (") == 1
    assert log.count("record store reachable again") == 1
    assert "Traceback" not in log


def test_directory_store_moved_away_and_back(make_appliance: MakeAppliance, tmp_path: Path) -> None:
    records = tmp_path / "records"
    app = make_appliance({"store": {"backend": "directory", "path": str(records)}})
    away = tmp_path / "records-away"
    ride_out_an_outage(
        app, lambda: records.rename(away), lambda: away.rename(records), str(records)
    )


def test_directory_store_replaced_by_a_file(make_appliance: MakeAppliance, tmp_path: Path) -> None:
    """A file where the folder was (a mount point gone wrong) is no empty store either."""
    records = tmp_path / "records"
    app = make_appliance({"store": {"backend": "directory", "path": str(records)}})
    away = tmp_path / "records-away"

    def take_away() -> None:
        records.rename(away)
        records.write_text("not a folder")

    def bring_back() -> None:
        records.unlink()
        away.rename(records)

    ride_out_an_outage(app, take_away, bring_back, str(records))


def test_postgresql_store_stopped_and_started(
    make_appliance: MakeAppliance, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    store = {
        "backend": "postgresql",
        "dsn": own_postgres.dsn_for(tmp_path),
        "password_file": str(own_postgres.password_file),
    }
    app = make_appliance({"store": store})
    ride_out_an_outage(
        app, own_postgres.stop, own_postgres.start_again, f"host={own_postgres.socket_dir}"
    )
