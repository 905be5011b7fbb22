"""What the first worker learns about the module at start: sign timing and C_CopyObject.

It generates a P-256 key pair as *session* objects (gone when the session closes, never on the
token), times signatures with it on the real signing path, tries ``C_CopyObject`` on the
private key, and destroys both halves. The result sizes the pool (:mod:`signer.hsm.sizing`) and
decides whether workers sign from session copies of their keys.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pkcs11 import Attribute, KeyType, Mechanism, Session
from pkcs11.exceptions import (
    AttributeReadOnly,
    AttributeValueInvalid,
    FunctionNotSupported,
    PKCS11Error,
    TemplateInconsistent,
)
from pkcs11.types import Object, SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from signer.hsm.keygen import exactly
from signer.hsm.mechanisms import (
    P256_CURVE_OID,
    private_key_template,
    public_key_template,
    signing_mechanism,
)
from signer.hsm.rawsign import SigningPath, object_handle
from signer.hsm.sizing import SignTiming

SAMPLES = 40
BUDGET_SECONDS = 0.5
WARM_UP = 3
COPY_UNSUPPORTED = (
    FunctionNotSupported,
    AttributeReadOnly,
    AttributeValueInvalid,
    TemplateInconsistent,
)
"""How modules say no to a session copy of a private key: sign from the token key instead."""


@dataclass(frozen=True)
class Calibration:
    """What a worker measured; None where the module did not let it measure."""

    timing: SignTiming | None
    copy_supported: bool | None
    problem: str | None = None


def session_key_pair(session: Session) -> tuple[Object, Object]:
    """A P-256 key pair as session objects, with signer's minimal templates."""
    ec_params = encode_named_curve_parameters(P256_CURVE_OID)
    label = "signer-calibration"
    public_template = {**public_key_template(label, None, ec_params), Attribute.TOKEN: False}
    private_template = {**private_key_template(label, None), Attribute.TOKEN: False}
    public, private = session.generate_keypair(
        KeyType.EC,
        mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template=exactly(public_template),
        private_template=exactly(private_template),
    )
    return public, private


def time_signatures(sign: Callable[[bytes], bytes]) -> SignTiming:
    """Sign random digests until :data:`SAMPLES` or the time budget; seconds per signature."""
    digest = os.urandom(32)
    for _ in range(WARM_UP):
        sign(digest)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    count = 0
    while count < SAMPLES and time.perf_counter() - wall_start < BUDGET_SECONDS:
        sign(digest)
        count += 1
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    return SignTiming(wall=wall / count, cpu=cpu / count, samples=count)


def copy_supported(private: Object) -> bool:
    """True when the module makes a session copy of a private key (C_CopyObject)."""
    try:
        copy = private.copy({Attribute.TOKEN: False})
    except COPY_UNSUPPORTED:
        return False
    with contextlib.suppress(PKCS11Error):  # a session object: it goes with the session anyway
        copy.destroy()
    return True


def calibrate(session: Session, path: SigningPath) -> Calibration:
    """Time signatures and try C_CopyObject with a throw-away session key pair.

    Where the signing path has a session of its own (a module instance per caller), the
    session key lives in python-pkcs11's session and is timed there, with one call more per
    signature; the ratio of waiting to CPU that sizes the pool stays much the same.
    """
    try:
        public, private = session_key_pair(session)
    except PKCS11Error as exc:
        return Calibration(None, None, f"no session key to measure with ({type(exc).__name__})")
    try:
        if path.own_session:
            assert isinstance(private, SignMixin)
            key: SignMixin = private

            def sign(digest: bytes) -> bytes:
                return bytes(key.sign(digest, mechanism=signing_mechanism()))
        else:
            handle = object_handle(private)

            def sign(digest: bytes) -> bytes:
                return path.sign(handle, digest)

        timing = time_signatures(sign)
        return Calibration(timing, copy_supported(private))
    except PKCS11Error as exc:
        return Calibration(None, None, f"measuring failed ({type(exc).__name__})")
    finally:
        for obj in (private, public):
            with contextlib.suppress(PKCS11Error):  # session objects go with the session anyway
                obj.destroy()
