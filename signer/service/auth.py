"""Who is calling and what they may do: identities from the client certificate, roles from config.

An identity is written the way the configuration names it: ``CN=<common name>``,
``URI:<SAN URI>``, ``DNS:<SAN DNS name>`` or ``SHA256:<hex fingerprint of the certificate>``.
Signing needs the role ``issuer``, KeyAdmin ``officer``, Audit ``auditor``; health and
reflection need only a certificate the server's client CA trusts (checked by TLS itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


Refusal = Callable[[str, str, str], None]


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the caller's role before a handler runs; refusals are counted and audited."""

    def __init__(self, roles: Roles, enforce: bool, on_refusal: Refusal) -> None:
        self._roles = roles
        self._enforce = enforce
        self._on_refusal = on_refusal

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        service = service_of(method)
        if handler is None or not self._enforce or service in OPEN_SERVICES:
            return handler
        role = ROLE_OF_SERVICE.get(service, "")
        return _guarded(handler, lambda context: self._check(context, role, method))

    def _check(self, context: grpc.ServicerContext, role: str, method: str) -> None:
        names = certificate_identities(context.auth_context())
        if not names:
            self._on_refusal("no_certificate", str(context.peer()), method)
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate issued by the appliance's client CA is required",
            )
        held = self._roles.roles_of(names)
        if not held:
            self._on_refusal("unknown_identity", names[0], method)
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{names[0]} is not a known identity of this appliance; ask the operator to"
                " list it under [roles]",
            )
        if role not in held:
            self._on_refusal("wrong_role", names[0], method)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{names[0]} does not hold the role {role!r} needed for {method};"
                " ask the appliance operator to grant it in the [roles] configuration",
            )


def _guarded(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return behavior(request, context)

        return run

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from behavior(request, context)

        return run

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
