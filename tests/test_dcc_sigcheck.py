"""Which signatures issuance checks against the DSC, and that a faulty signer is caught.

A software P-256 key plays the signer (as in ``test_dcc_issue_verify``); "faulty" signers sign
with another key or break one signature, which is what the check exists to catch.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from signer.dcc.issue import ChunkSigner, IssuingKey, SignatureMismatch, prepare
from signer.dcc.sigcheck import DEFAULT_SAMPLE_RATE, SignatureCheck
from signer.dcc.trust import TrustStore
from signer.dcc.verify import verify
from tests.test_dcc_issue_verify import IAT, SoftSigner, make_dsc, records

NOT_AFTER = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class BreakingSigner:
    """Signs with ``inner`` but flips a bit in the signatures at the positions in ``broken``."""

    inner: SoftSigner
    broken: frozenset[int]

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        good = self.inner.sign(profile, kid, digests)
        return [
            bytes([s[0] ^ 1]) + s[1:] if index in self.broken else s for index, s in enumerate(good)
        ]


def soft_signer() -> SoftSigner:
    key = ec.generate_private_key(ec.SECP256R1())
    return SoftSigner(key, make_dsc(key))


def test_first_signature_of_every_kid_is_checked_then_a_sample() -> None:
    check = SignatureCheck(0.0)
    assert [check.wanted(b"kid-1") for _ in range(5)] == [True, False, False, False, False]
    assert check.wanted(b"kid-2") is True
    assert check.wanted(b"kid-2") is False
    assert check.checked == 2

    every = SignatureCheck.every()
    assert all(every.wanted(b"kid") for _ in range(100))
    assert every.checked == 100


@pytest.mark.parametrize("rate", [0.01, 0.25])
def test_sample_rate_is_what_was_asked(rate: float) -> None:
    draws = 40_000
    check = SignatureCheck(rate, seed=7)
    check.wanted(b"kid")  # the first one of the kid is always checked
    picked = sum(check.wanted(b"kid") for _ in range(draws))
    spread = 6 * math.sqrt(draws * rate * (1 - rate))  # six binomial standard deviations
    assert abs(picked - draws * rate) <= spread


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf])
def test_rates_outside_zero_to_one_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        SignatureCheck(rate)


def test_default_rate_is_a_sample() -> None:
    assert 0 < DEFAULT_SAMPLE_RATE < 1


def chunk_signer(signer: object, key_of: SoftSigner, check: SignatureCheck) -> ChunkSigner:
    key = IssuingKey.from_dsc(key_of.kid, key_of.dsc_der)
    return ChunkSigner(signer, key, check=check)  # type: ignore[arg-type]


def test_a_signer_with_another_key_is_caught_at_the_first_certificate() -> None:
    claimed, actual = soft_signer(), soft_signer()
    prepared = prepare(records(), claimed.kid, "VN", IAT, NOT_AFTER)

    @dataclass
    class WrongKey:
        def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
            return actual.sign(profile, actual.kid, digests)

    check = SignatureCheck(0.0)
    with pytest.raises(SignatureMismatch, match="signature 0 does not verify"):
        chunk_signer(WrongKey(), claimed, check).sign(prepared)
    assert check.checked == 1


def test_a_broken_signature_is_caught_when_checked_and_missed_when_not() -> None:
    signer = soft_signer()
    prepared = prepare(records(), signer.kid, "VN", IAT, NOT_AFTER)
    faulty = BreakingSigner(signer, frozenset({5}))
    with pytest.raises(SignatureMismatch, match="signature 5 does not verify"):
        chunk_signer(faulty, signer, SignatureCheck.every()).sign(prepared)

    # Unchecked, the broken one goes out: what the sample rate trades against CPU.
    only_first = SignatureCheck(0.0)
    _, hc1s = chunk_signer(faulty, signer, only_first).sign(prepared)
    assert only_first.checked == 1
    trust = TrustStore.from_dsc(signer.dsc_der)
    valid = [verify(hc1, trust).signature_valid for hc1 in hc1s]
    assert valid == [index != 5 for index in range(len(prepared))]
