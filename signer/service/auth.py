"""Who is calling and what they may do: identities from the client certificate, roles from config.

An identity is written the way the configuration names it: ``CN=<common name>``,
``URI:<SAN URI>``, ``DNS:<SAN DNS name>`` or ``SHA256:<hex fingerprint of the certificate>``.
Signing needs the role ``issuer``, KeyAdmin ``officer``, Audit ``auditor``; health and
reflection need only a certificate the server's client CA trusts (checked by TLS itself).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from signer.config import RoleSettings
from signer.identity import certificate_names, normalise

ROLE_OF_SERVICE: Mapping[str, str] = {
    "signer.v1.Signing": "issuer",
    "signer.v1.KeyAdmin": "officer",
    "signer.v1.Audit": "auditor",
}
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services any certificate the client CA trusts may call; every other service is denied."""


def certificate_identities(auth_context: Mapping[str, Sequence[bytes]]) -> list[str]:
    """Every name under which a verified client certificate may be known."""
    names = [f"CN={cn.decode()}" for cn in auth_context.get("x509_common_name", [])]
    pem = auth_context.get("x509_pem_cert", [])
    return names + list(_certificate_names(pem[0])) if pem else names


@functools.lru_cache(maxsize=1024)
def _certificate_names(pem: bytes) -> tuple[str, ...]:
    """Fingerprint and SAN names of a client certificate (parsed once per certificate)."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    return tuple(name for name in certificate_names(der) if not name.startswith("CN="))


def role_identity(context: grpc.ServicerContext, roles: Roles, role: str) -> str | None:
    """The certificate name under which the caller holds ``role`` (what dual control counts)."""
    for name in certificate_identities(context.auth_context()):
        if role in roles.roles_of([name]):
            return name
    return None


def caller_identity(context: grpc.ServicerContext) -> str:
    """The caller's primary identity (first certificate name), else its peer address."""
    names = certificate_identities(context.auth_context())
    return names[0] if names else str(context.peer())


@dataclass(frozen=True)
class Roles:
    """Identity -> roles, from the configuration."""

    grants: Mapping[str, frozenset[str]]

    @classmethod
    def from_settings(cls, settings: RoleSettings) -> Roles:
        """Collect the identities listed under each role."""
        grants: dict[str, set[str]] = {}
        for role, identities in (
            ("issuer", settings.issuer),
            ("officer", settings.officer),
            ("auditor", settings.auditor),
        ):
            for identity in identities:
                grants.setdefault(normalise(identity), set()).add(role)
        return cls({k: frozenset(v) for k, v in grants.items()})

    def roles_of(self, identities: Iterable[str]) -> frozenset[str]:
        """All roles held by any of the identities."""
        held: set[str] = set()
        for identity in identities:
            held |= self.grants.get(normalise(identity), frozenset())
        return frozenset(held)


def service_of(method: str) -> str:
    """``/signer.v1.Signing/SignBatch`` -> ``signer.v1.Signing``."""
    return method.strip("/").split("/", 1)[0]


@dataclass(frozen=True)
class AuthRefusal:
    """Why a caller may not call a method: what is counted and audited, and what it is told."""

    reason: str
    identity: str
    code: grpc.StatusCode
    message: str


def authorise(
    names: list[str], peer: str, roles: Roles, role: str, method: str
) -> AuthRefusal | None:
    """None when a caller known by the certificate ``names`` holds ``role``, else the refusal."""
    if not names:
        return AuthRefusal(
            "no_certificate",
            peer,
            grpc.StatusCode.UNAUTHENTICATED,
            "a client certificate issued by the appliance's client CA is required",
        )
    held = roles.roles_of(names)
    if not held:
        return AuthRefusal(
            "unknown_identity",
            names[0],
            grpc.StatusCode.UNAUTHENTICATED,
            f"{names[0]} is not a known identity of this appliance; ask the operator to"
            " list it under [roles]",
        )
    if role not in held:
        return AuthRefusal(
            "wrong_role",
            names[0],
            grpc.StatusCode.PERMISSION_DENIED,
            f"{names[0]} does not hold the role {role!r} needed for {method};"
            " ask the appliance operator to grant it in the [roles] configuration",
        )
    return None


def required_role(method: str, enforce: bool) -> str | None:
    """The role a method needs, or None when any caller TLS let in may call it."""
    service = service_of(method)
    if not enforce or service in OPEN_SERVICES:
        return None
    return ROLE_OF_SERVICE.get(service, "")


@dataclass(frozen=True)
class Caller:
    """Who makes the current call, worked out once per call by the server's interceptor."""

    identity: str
    names: tuple[str, ...] = ()


CALLER: ContextVar[Caller] = ContextVar("signer_caller")
"""The caller of the RPC the current task serves (set by the interceptor around the servicer)."""


def current_identity(context: grpc.ServicerContext) -> str:
    """The current caller's identity: from the interceptor if it ran, else from ``context``."""
    caller = CALLER.get(None)
    return caller.identity if caller is not None else caller_identity(context)
