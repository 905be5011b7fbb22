"""The pure parts behind hostile-client defences: echoes, identities, limits, refusal tallies.

The daemon-level tests are in tests/test_hostile_clients.py and tests/test_call_limits.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from signer import config
from signer.config import LimitSettings, RoleSettings
from signer.errors import ConfigError, QuotaExceeded
from signer.identity import MAX_IDENTITY_CHARS
from signer.service.auth import ANY_ROLE, Roles, authorise
from signer.service.echo import MESSAGE_BYTES, bounded_message, shown
from signer.service.limits import CallLimits, LimitExceeded
from signer.service.refusals import MAX_TALLIES, OVERFLOW_IDENTITY, RefusalTally
from signer.service.rpc import refusal, request_id_of
from signer.service.validation import check_kid, check_profile
from signer.v1.signing_pb2 import SignBatchRequest

FINGERPRINT = "SHA256:" + "ab" * 32

# -- echoes ---------------------------------------------------------------------------------------


def test_shown_cuts_long_strings_and_says_how_long_they_were() -> None:
    text = shown("p" * 800_000)
    assert text.startswith("'" + "p" * 64 + "'") and text.endswith("(800000 characters)")
    assert len(text) < 100
    assert shown("vaccination") == "'vaccination'"
    assert shown(b"\x01" * 500_000, 16) == "01" * 16 + "... (500000 bytes)"


def test_shown_escapes_control_characters() -> None:
    text = shown("evil\nFORGED line\r\x1b[31m")
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\\n" in text and "\\x1b" in text


def test_bounded_message_is_one_line_and_bounded_in_bytes() -> None:
    assert bounded_message("fine") == "fine"
    long = bounded_message("ü" * 5000 + "\n" * 10)
    assert "\n" not in long and len(long.encode()) <= MESSAGE_BYTES
    assert bounded_message("a\nb") == "a\\nb"


def test_every_refusal_message_is_bounded_whatever_the_error_quotes() -> None:
    ending = refusal(QuotaExceeded("x" * 600_000 + "\nforged", 1.0))
    assert ending.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(ending.message.encode()) <= MESSAGE_BYTES and "\n" not in ending.message


def test_request_ids_in_the_access_log_are_cut_and_escaped() -> None:
    request_id = request_id_of(SignBatchRequest(request_id="r\n" * 1000))
    assert "\n" not in request_id and len(request_id) <= 2 * 128


@pytest.mark.parametrize(
    ("call", "value", "words"),
    [
        (check_profile, "p" * 800_000, ("longer than 64", "800000 characters")),
        (check_kid, b"\x07" * 500_000, ("500000 bytes", "GetSigningKey")),
        (check_kid, b"", ("kid is required",)),
        (check_kid, b"\x07" * 9, ("is 9 bytes",)),
    ],
)
def test_oversized_request_fields_are_invalid_with_a_short_message(
    call: object, value: object, words: tuple[str, ...]
) -> None:
    with pytest.raises(Exception) as caught:
        call(value)  # type: ignore[operator]
    message = refusal(caught.value).message  # type: ignore[arg-type]
    assert refusal(caught.value).code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[arg-type]
    assert len(message) < 400
    for word in words:
        assert word in message


# -- identities -----------------------------------------------------------------------------------


ROLES = Roles.from_settings(
    RoleSettings(
        issuer=("URI:spiffe://moh.test/a", "URI:spiffe://moh.test/b", "CN=shared"),
        officer=("CN=officer",),
        auditor=("CN=auditor",),
    ),
    {"alice": ("CN=officer",)},
)


def test_the_identity_is_the_name_that_granted_the_role() -> None:
    a = ROLES.caller((FINGERPRINT, "URI:spiffe://moh.test/a"), "ipv4:1", "issuer")
    b = ROLES.caller(("SHA256:" + "cd" * 32, "URI:spiffe://moh.test/b"), "ipv4:2", "issuer")
    assert (a.identity, b.identity) == ("URI:spiffe://moh.test/a", "URI:spiffe://moh.test/b")
    assert authorise(a, "issuer", "/signer.v1.Signing/SignBatch") is None
    both = ROLES.caller((FINGERPRINT, "URI:spiffe://moh.test/a", "CN=shared"), "ipv4:1", "issuer")
    assert both.identity == "URI:spiffe://moh.test/a", "the most specific name comes first"


def test_an_officer_is_the_person_and_the_name() -> None:
    officer = ROLES.caller((FINGERPRINT, "CN=officer"), "ipv4:1", "officer")
    assert (officer.identity, officer.person) == ("alice/CN=officer", "alice")
    refused = authorise(officer, "issuer", "/signer.v1.Signing/SignBatch")
    assert refused is not None and refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.identity == "alice/CN=officer"


def test_a_certificate_without_a_role_is_its_fingerprint() -> None:
    name = "CN=evil\nFORGED " + "x" * 5000
    stranger = ROLES.caller((FINGERPRINT, name), "ipv4:1", "issuer")
    assert stranger.identity == FINGERPRINT and not stranger.known
    refused = authorise(stranger, ANY_ROLE, "/grpc.reflection.v1.ServerReflection/Info")
    assert refused is not None and refused.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == "unknown_identity" and "\n" not in refused.message
    assert FINGERPRINT in refused.message and f"({len(name)} characters)" in refused.message
    assert len(refused.message) < 400


def test_identities_longer_than_the_cap_are_refused_in_the_configuration(tmp_path: Path) -> None:
    raw = {
        "hsm": {"module": "/x.so", "token_label": "t", "pin_file": "pin"},
        "keys": {"dev": True},
        "roles": {"issuer": ["URI:spiffe://" + "a" * MAX_IDENTITY_CHARS]},
    }
    with pytest.raises(ConfigError) as caught:
        config.parse(raw, tmp_path / "signer.toml")
    assert f"longer than {MAX_IDENTITY_CHARS} characters" in str(caught.value)


def test_limits_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    raw = {
        "hsm": {"module": "/x.so", "token_label": "t", "pin_file": "pin"},
        "keys": {"dev": True},
        "limits": {"max_streams": 10, "max_streams_per_identity": 11, "stream_idle_seconds": 0},
    }
    with pytest.raises(ConfigError) as caught:
        config.parse(raw, tmp_path / "signer.toml")
    message = str(caught.value)
    assert "max_streams_per_identity (11) must not be above max_streams (10)" in message
    assert "[limits.stream_idle_seconds] must be >= 0.5" in message


# -- limits ---------------------------------------------------------------------------------------


def test_limits_count_per_identity_and_overall_and_name_the_limit() -> None:
    refused: list[str] = []
    limits = CallLimits(
        LimitSettings(
            max_calls=5, max_calls_per_identity=4, max_streams=3, max_streams_per_identity=2
        ),
        refused.append,
    )
    a = [limits.admit("A", stream=True) for _ in range(2)]
    with pytest.raises(LimitExceeded) as caught:
        limits.admit("A", stream=True)
    assert caught.value.limit == "max_streams_per_identity"
    assert "max_streams_per_identity" in str(caught.value)
    a.append(limits.admit("A", stream=False))  # unary calls still fit
    b = limits.admit("B", stream=True)
    with pytest.raises(LimitExceeded) as caught:
        limits.admit("C", stream=True)
    assert caught.value.limit == "max_streams"
    c = limits.admit("C", stream=False)
    with pytest.raises(LimitExceeded) as caught:
        limits.admit("D", stream=False)
    assert caught.value.limit == "max_calls"
    assert refused == ["max_streams_per_identity", "max_streams", "max_calls"]
    for release in [*a, b, c]:
        release()
        release()  # a second release changes nothing
    assert (limits.calls, limits.streams) == (0, 0)
    assert limits.admit("D", stream=True) is not None


# -- refusal tallies ------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_refusals_are_one_record_per_identity_reason_and_window() -> None:
    clock = Clock(1_000_020.5)
    tally = RefusalTally(60, clock)
    for _ in range(300):
        tally.note("unknown_identity", FINGERPRINT, "SignBatch", "'CN=x'")
    tally.note("unknown_identity", FINGERPRINT, "ServerReflectionInfo", "'CN=x'")
    tally.note("wrong_role", "alice/CN=officer", "SignBatch")
    assert tally.due() == [] and tally.pending == 302
    assert tally.next_boundary() == 1_000_080
    clock.now = 1_000_080.0  # the next window
    tally.note("wrong_role", "alice/CN=officer", "SignBatch")
    records = {(r.identity, r.reason): r for r in tally.due()}
    stranger = records[(FINGERPRINT, "unknown_identity")]
    assert stranger.count == 301 and stranger.methods == ("ServerReflectionInfo", "SignBatch")
    details = stranger.details()
    assert details["count"] == 301 and details["subject"] == "'CN=x'"
    assert details["window_start"] == datetime.fromtimestamp(1_000_020, UTC).isoformat(
        timespec="milliseconds"
    )
    assert records[("alice/CN=officer", "wrong_role")].count == 1
    [last] = tally.drain()
    assert (last.identity, last.count) == ("alice/CN=officer", 1)
    assert tally.pending == 0


def test_a_window_holds_a_bounded_number_of_records() -> None:
    tally = RefusalTally(60, Clock(120.0))
    for n in range(MAX_TALLIES + 500):
        tally.note("unknown_identity", f"SHA256:{n:064x}", "SignBatch")
    records = tally.drain()
    assert len(records) == MAX_TALLIES + 1
    [overflow] = [r for r in records if r.identity == OVERFLOW_IDENTITY]
    assert overflow.count == 500
    assert sum(r.count for r in records) == MAX_TALLIES + 500
