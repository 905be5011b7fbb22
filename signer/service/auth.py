"""Who is calling and what they may do: identities from the client certificate, roles from config.

An identity is written the way the configuration names it: ``CN=<common name>``,
``URI:<SAN URI>``, ``DNS:<SAN DNS name>`` or ``SHA256:<hex fingerprint of the certificate>``.
Signing needs the role ``issuer``, KeyAdmin ``officer``, Audit ``auditor``, reflection any
role; health needs only a certificate the server's client CA trusts (checked by TLS itself).

A caller is known by the name that granted it the role the call needs (for officers: the person
and that name, ``alice/SHA256:...``); that one identity is what audit records, quotas, limits,
the access log and the metrics use, so two certificates that hold a role through different
names stay two callers. A certificate that holds no role is known by its fingerprint, never by
a name its holder chose.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc

from signer.config import RoleSettings
from signer.identity import (
    MAX_IDENTITY_CHARS,
    certificate_names,
    fingerprint_name,
    normalise,
    ranked,
)
from signer.service.echo import escaped, shown

ROLE_OF_SERVICE: Mapping[str, str] = {
    "signer.v1.Signing": "issuer",
    "signer.v1.KeyAdmin": "officer",
    "signer.v1.Audit": "auditor",
}
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
ANY_ROLE = "*"
"""What reflection needs: any role at all (a certificate without one may only ask health)."""


def certificate_identities(auth_context: Mapping[str, Sequence[bytes]]) -> list[str]:
    """Every name under which a verified client certificate may be known, most specific first."""
    pem = auth_context.get("x509_pem_cert", [])
    return list(_certificate_names(pem[0])) if pem else []


@functools.lru_cache(maxsize=1024)
def _certificate_names(pem: bytes) -> tuple[str, ...]:
    """Fingerprint, SAN names and CNs of a client certificate (parsed once per certificate)."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    try:
        return ranked(certificate_names(der))
    except ValueError:
        return (fingerprint_name(der),)  # TLS accepted it, but its names do not parse


def caller_identity(context: grpc.ServicerContext) -> str:
    """The caller's most specific certificate name, else its peer address (no roles known)."""
    names = certificate_identities(context.auth_context())
    return names[0] if names else peer_identity(str(context.peer()))


def peer_identity(peer: str) -> str:
    """A caller without a certificate (development without TLS): its address, escaped."""
    return escaped(peer)[:MAX_IDENTITY_CHARS]


@dataclass(frozen=True)
class Caller:
    """Who makes the current call, worked out once per call by the server's interceptor."""

    identity: str
    names: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    person: str | None = None
    """The officer of ``[officers]`` the identity belongs to, if any."""
    subject: str = ""
    """The certificate's first CN or SAN as shown in records of a caller without a role."""

    @property
    def known(self) -> bool:
        """True when the caller holds a role (its identity is a name from the configuration)."""
        return bool(self.roles)


@dataclass(frozen=True)
class Roles:
    """Identity -> roles, from the configuration."""

    grants: Mapping[str, frozenset[str]]
    persons: Mapping[str, str] = field(default_factory=dict)
    """Normalised officer identity -> the person of ``[officers]`` it belongs to."""

    @classmethod
    def from_settings(
        cls, settings: RoleSettings, officers: Mapping[str, Sequence[str]] | None = None
    ) -> Roles:
        """Collect the identities listed under each role, and each officer identity's person."""
        grants: dict[str, set[str]] = {}
        for role, identities in (
            ("issuer", settings.issuer),
            ("officer", settings.officer),
            ("auditor", settings.auditor),
        ):
            for identity in identities:
                grants.setdefault(normalise(identity), set()).add(role)
        persons = {
            normalise(identity): person
            for person, identities in (officers or {}).items()
            for identity in identities
        }
        return cls({k: frozenset(v) for k, v in grants.items()}, persons)

    def roles_of(self, identities: Iterable[str]) -> frozenset[str]:
        """All roles held by any of the identities."""
        held: set[str] = set()
        for identity in identities:
            held |= self.grants.get(normalise(identity), frozenset())
        return frozenset(held)

    def caller(self, names: tuple[str, ...], peer: str, role: str | None) -> Caller:
        """The caller known by certificate ``names`` (most specific first) on a call that needs
        ``role``: the identity is the first name granting that role, else the first granting
        any role, else the certificate's fingerprint. Without a certificate: ``peer``."""
        if not names:
            return Caller(peer_identity(peer))
        granting = [(name, self.grants.get(normalise(name), frozenset())) for name in names]
        held = frozenset().union(*(roles for _, roles in granting))
        if not held:
            return Caller(_fingerprint(names), names, held, subject=_subject(names))
        name = next(
            (n for n, roles in granting if role in roles),
            next(n for n, roles in granting if roles),
        )
        person = self.persons.get(normalise(name))
        identity = f"{person}/{name}" if person else name
        return Caller(identity, names, held, person)


def _fingerprint(names: Iterable[str]) -> str:
    return next(name for name in names if name.startswith("SHA256:"))


def _subject(names: Iterable[str]) -> str:
    """The first name a holder chose (CN, else a SAN), escaped and cut, for the records."""
    chosen = [name for name in names if not name.startswith("SHA256:")]
    cns = [name for name in chosen if name.startswith("CN=")]
    return shown((cns or chosen or [""])[0])


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
    subject: str = ""


def authorise(caller: Caller, role: str, method: str) -> AuthRefusal | None:
    """None when ``caller`` holds ``role`` (:data:`ANY_ROLE`: any role), else the refusal."""
    if not caller.names:
        return AuthRefusal(
            "no_certificate",
            caller.identity,
            grpc.StatusCode.UNAUTHENTICATED,
            "a client certificate issued by the appliance's client CA is required",
        )
    if not caller.known:
        return AuthRefusal(
            "unknown_identity",
            caller.identity,
            grpc.StatusCode.UNAUTHENTICATED,
            f"the client certificate {caller.identity} (subject {caller.subject}) holds no role"
            " on this appliance; ask the operator to list one of its names under [roles]",
            caller.subject,
        )
    if role != ANY_ROLE and role not in caller.roles:
        return AuthRefusal(
            "wrong_role",
            caller.identity,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller.identity} does not hold the role {role!r} needed for {method};"
            " ask the appliance operator to grant it in the [roles] configuration",
        )
    return None


def required_role(method: str, enforce: bool) -> str | None:
    """The role a method needs, or None when any caller TLS let in may call it."""
    service = service_of(method)
    if not enforce or service == HEALTH_SERVICE:
        return None
    if service in REFLECTION_SERVICES:
        return ANY_ROLE
    return ROLE_OF_SERVICE.get(service, "")


CALLER: ContextVar[Caller] = ContextVar("signer_caller")
"""The caller of the RPC the current task serves (set by the interceptor around the servicer)."""


def current_identity(context: grpc.ServicerContext) -> str:
    """The current caller's identity: from the interceptor if it ran, else from ``context``."""
    caller = CALLER.get(None)
    return caller.identity if caller is not None else caller_identity(context)
