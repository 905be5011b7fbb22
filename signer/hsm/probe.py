"""``signer hsm probe``: every PKCS#11 operation signer needs, tried on the configured module.

Operators run it before their first ceremony. It works in a scratch key set (a P-256 key pair,
its certificate and a data object, all labelled ``signer-probe-<random>``) on the configured
token, through signer's own code paths, and removes the scratch objects at the end. Two worker
processes log in and sign at the same time as this process holds its own session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pkcs11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, Mechanism, ObjectClass, Session
from pkcs11.exceptions import PKCS11Error
from pkcs11.types import Object, VerifyMixin

from signer.config import HsmSettings
from signer.errors import ConfigError, SignerError
from signer.hsm import keystore
from signer.hsm.api import GeneratedKey
from signer.hsm.calibrate import copy_supported, time_signatures
from signer.hsm.keygen import (
    KeyNotProtected,
    KeyTemplateRefused,
    generate_ec_key,
    protection_problems,
    read_protection,
)
from signer.hsm.pool import WorkerPool
from signer.hsm.probe_report import Report
from signer.hsm.session import TokenSession
from signer.hsm.sizing import plan_pool
from signer.hsm.token import load_module, open_session

SCRATCH_PREFIX = "signer-probe-"
PROBE_APPLICATION = "signer.v1/probe"
_CONCURRENT_WORKERS = 2
_DIGESTS_PER_WORKER = 64


def probe(settings: HsmSettings) -> Report:
    """Run every check on the configured module and token; the report says what works."""
    report = Report(str(settings.module))
    try:
        lib = load_module(settings)
    except SignerError as exc:
        report.add("load the module", False, str(exc))
        return report
    try:
        version = lib.library_version
        report.add(
            "load the module",
            True,
            f"{lib.manufacturer_id.strip()} {lib.library_description.strip()}"
            f" {'.'.join(map(str, version))}",
        )
        try:
            session = open_session(settings, lib)
        except ConfigError:
            raise
        except SignerError as exc:
            report.add("find the token, log in", False, str(exc))
            return report
        report.add("find the token, log in", True, f"token {settings.token_label!r}")
        with session:
            _probe_session(report, session, settings)
    finally:
        pkcs11.unload(str(settings.module))
    return report


def _probe_session(report: Report, session: Session, settings: HsmSettings) -> None:
    label = SCRATCH_PREFIX + secrets.token_hex(4)
    _check_mechanisms(report, session)
    key = _generate(report, session, settings, label)
    try:
        if key is None:
            done = {check.capability for check in report.checks}
            for capability in _NEEDS_KEY:
                if capability not in done:
                    report.add(capability, None, "needs the scratch key")
        else:
            _with_key(report, session, settings, key, label)
        _check_data_objects(report, session, label)
        _check_random(report, session)
    finally:
        _clean_up(report, session, key, label)


_NEEDS_KEY = (
    "key reads back protected",
    "sign (C_SignInit + C_Sign, 64 bytes)",
    "signature verifies",
    "certificate objects",
    "concurrent logins and signing",
)


def _with_key(
    report: Report, session: Session, settings: HsmSettings, key: GeneratedKey, label: str
) -> None:
    private = keystore.private_key(session, key.key_id)
    flags = read_protection(private)
    weak = protection_problems(flags)
    report.add(
        "key reads back protected",
        not weak,
        ", ".join(weak) if weak else "sensitive, never extractable, sign-only",
    )
    token = TokenSession(session, settings)
    digest = os.urandom(32)
    signature = b""
    try:
        signature = token.sign_packed(key.key_id, digest)
        path = "a session of its own" if token.path.own_session else "the same session"
        report.add("sign (C_SignInit + C_Sign, 64 bytes)", True, f"2 calls, on {path}")
    except SignerError as exc:
        report.add("sign (C_SignInit + C_Sign, 64 bytes)", False, str(exc))
    if signature:
        _check_verify(report, session, key, digest, signature)
    else:
        report.add("signature verifies", None, "needs a signature")
    _check_copy(report, private, settings)
    _check_certificates(report, session, key, label)
    if signature:
        _check_latency(report, token, key, settings)
    token.close()
    _check_concurrency(report, settings, key)


def _check_mechanisms(report: Report, session: Session) -> None:
    try:
        offered = session.token.slot.get_mechanisms()
    except PKCS11Error as exc:
        report.add(
            "list mechanisms", False, f"C_GetMechanismList: {type(exc).__name__}", required=False
        )
        return
    wanted = {"CKM_EC_KEY_PAIR_GEN": Mechanism.EC_KEY_PAIR_GEN, "CKM_ECDSA": Mechanism.ECDSA}
    absent = [name for name, mechanism in wanted.items() if mechanism not in offered]
    detail = f"missing {', '.join(absent)}" if absent else "CKM_EC_KEY_PAIR_GEN, CKM_ECDSA"
    if not absent:
        info = session.token.slot.get_mechanism_info(Mechanism.ECDSA)
        low, high = info.min_key_length or 0, info.max_key_length or 0
        if high and not low <= 256 <= high:
            absent.append("256-bit keys")
            detail = f"CKM_ECDSA takes {low}-{high} bit keys, not 256"
    report.add("elliptic curves (P-256)", not absent, detail)


def _generate(
    report: Report, session: Session, settings: HsmSettings, label: str
) -> GeneratedKey | None:
    """Generate the scratch key as signer does; if the module refuses a given CKA_ID, try again
    letting it choose, and recommend the key_id_bytes that worked."""
    capability = "generate a key (minimal template)"
    tried = settings
    try:
        key = generate_ec_key(session, label, settings)
    except KeyTemplateRefused as exc:
        if not settings.key_id_bytes:
            report.add(capability, False, str(exc))
            return None
        tried = replace(settings, key_id_bytes=0)
        try:
            key = generate_ec_key(session, label, tried)
        except SignerError as again:
            report.add(capability, False, str(again))
            return None
    except KeyNotProtected as exc:
        report.add(capability, True, "generated")
        report.add("key reads back protected", False, str(exc))
        return None
    except SignerError as exc:
        report.add(capability, False, str(exc))
        return None
    stored = len(bytes.fromhex(key.key_id))
    if tried.key_id_bytes == 0:
        detail = f"the module chose a {stored}-byte CKA_ID"
        report.recommend("hsm", "key_id_bytes = 0  # the module refuses ids it did not choose")
    elif stored != tried.key_id_bytes:
        detail = f"asked for a {tried.key_id_bytes}-byte CKA_ID, the module kept {stored} bytes"
        report.recommend("hsm", f"key_id_bytes = {stored}  # what the module keeps of a CKA_ID")
    else:
        detail = f"{stored}-byte CKA_ID kept"
        report.recommend("hsm", f"key_id_bytes = {stored}")
    report.add(capability, True, detail)
    return key


def _check_verify(
    report: Report, session: Session, key: GeneratedKey, digest: bytes, signature: bytes
) -> None:
    public = serialization.load_der_public_key(key.spki_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        public.verify(
            utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )
        valid = True
    except InvalidSignature:
        valid = False
    in_hsm = "not tried"
    with contextlib.suppress(PKCS11Error, SignerError):
        found = list(
            session.get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: bytes.fromhex(key.key_id)}
            )
        )
        if found and isinstance(found[0], VerifyMixin):
            ok = found[0].verify(digest, signature, mechanism=Mechanism.ECDSA)
            in_hsm = "ok" if ok else "refused"
    report.add(
        "signature verifies",
        valid,
        f"raw r||s, checked in software ({'valid' if valid else 'INVALID'}); C_Verify {in_hsm}",
    )


def _check_copy(report: Report, private: Object, settings: HsmSettings) -> None:
    try:
        works = copy_supported(private)
    except PKCS11Error as exc:
        works = False
        detail = f"C_CopyObject: {type(exc).__name__}"
    else:
        detail = "session copies sign ~10% faster on SoftHSM" if works else "not supported"
    report.add("copy a key into the session", works, detail, required=False)
    report.recommend(
        "hsm",
        "copy_keys_to_session = true"
        if works
        else "copy_keys_to_session = false  # the module cannot copy keys (C_CopyObject)",
    )


def _scratch_certificate(label: str) -> bytes:
    """A self-signed certificate from a throw-away software key: only its storage is tested."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _check_certificates(report: Report, session: Session, key: GeneratedKey, label: str) -> None:
    der = _scratch_certificate(label)
    try:
        keystore.store_certificate(session, key.key_id, label, der)
        stored = keystore.certificate(session, key.key_id)
        report.add("certificate objects", stored == der, "stored, read back, identical")
    except (SignerError, PKCS11Error) as exc:
        report.add("certificate objects", False, str(exc) or type(exc).__name__)


def _check_data_objects(report: Report, session: Session, label: str) -> None:
    try:
        generation = keystore.put_record(session, PROBE_APPLICATION, label, 0, b"probe")
        found = keystore.records(session, PROBE_APPLICATION).get(label)
        works = found == (generation, b"probe")
        keystore.delete_record(session, PROBE_APPLICATION, label, generation)
        detail = "CKO_DATA with CKA_APPLICATION: written, read, removed"
    except (SignerError, PKCS11Error) as exc:
        works, detail = False, str(exc) or type(exc).__name__
    report.add("data objects (record store)", works, detail, required=False)
    report.recommend(
        "store",
        'backend = "token"  # or "directory" / "postgresql"'
        if works
        else 'backend = "directory"  # or "postgresql": the module holds no data objects',
    )


def _check_random(report: Report, session: Session) -> None:
    try:
        works = len(session.generate_random(256)) == 32
        detail = "C_GenerateRandom (health checks use it)"
    except PKCS11Error as exc:
        works, detail = False, f"C_GenerateRandom: {type(exc).__name__}"
    report.add("random numbers", works, detail)


def _check_latency(
    report: Report, token: TokenSession, key: GeneratedKey, settings: HsmSettings
) -> None:
    try:
        timing = time_signatures(partial(token.sign_packed, key.key_id))
    except SignerError as exc:
        report.add("signing latency", False, str(exc), required=False)
        return
    cores = os.cpu_count() or 1
    plan = plan_pool(timing, cores, "auto", settings.max_workers, settings.chunk_digests)
    report.add(
        "signing latency",
        True,
        f"{timing.wall * 1e3:.3f} ms per signature, {timing.cpu * 1e3:.3f} ms of it CPU here"
        f" ({timing.samples} signatures)",
        required=False,
    )
    report.recommend(
        "hsm",
        f'workers = "auto"  # would start {plan.workers} here ({plan.wanted} keep {cores}'
        f" cores busy; max_workers = {settings.max_workers})",
    )


def _check_concurrency(report: Report, settings: HsmSettings, key: GeneratedKey) -> None:
    pool = WorkerPool(settings, count=_CONCURRENT_WORKERS)
    try:
        pool.start()
        digests = os.urandom(32 * _DIGESTS_PER_WORKER)
        answers = pool.broadcast(
            partial(TokenSession.sign_packed, key_id=key.key_id, digests=digests)
        )
        works = len(answers) == _CONCURRENT_WORKERS and all(
            len(answer) == 64 * _DIGESTS_PER_WORKER for answer in answers
        )
        detail = f"{_CONCURRENT_WORKERS} worker processes logged in beside this one and signed"
        if not works:
            detail = f"only {len(answers)} of {_CONCURRENT_WORKERS} worker processes signed"
    except SignerError as exc:
        works, detail = False, str(exc)
    finally:
        pool.close()
    report.add("concurrent logins and signing", works, detail)


def _clean_up(report: Report, session: Session, key: GeneratedKey | None, label: str) -> None:
    with contextlib.suppress(SignerError, PKCS11Error):
        if key is not None:
            keystore.delete_certificate(session, key.key_id)
            keystore.destroy_key_pair(session, key.key_id)
    try:
        left = list(session.get_objects({Attribute.LABEL: label}))
        for obj in left:
            obj.destroy()
        left = list(session.get_objects({Attribute.LABEL: label}))
    except PKCS11Error as exc:
        report.add("scratch objects removed", False, type(exc).__name__, required=False)
        return
    report.add(
        "scratch objects removed",
        not left,
        f"nothing labelled {label!r} is left"
        if not left
        else f"{len(left)} left: remove {label!r}",
        required=False,
    )
