"""``signer.v1.KeyAdmin``: key ceremonies for security officers, under signed dual control.

The caller is a *person* of ``[officers]``, found from the client certificate on the
connection. Change requests and approvals carry that person's signature over the change
document; the certificate that signed is the one on the connection, and it is stored with the
signature so that every daemon can check it again later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from signer.errors import AuditError, InvalidRequest, PermissionDenied
from signer.keys.ceremony import ChangeOutcome, KeyCeremonies
from signer.keys.dual_control import PendingChange
from signer.keys.governance import ACTIONS, Action, ChangeDocument, Endorsement, Role
from signer.keys.snapshot import KeyView
from signer.service.auth import certificate_identities
from signer.service.echo import shown
from signer.service.metrics import Metrics
from signer.service.signing import timestamp
from signer.v1 import key_admin_pb2, key_admin_pb2_grpc

_MAX_REASON = 500
MAX_OFFICER_CHARS = 64


@dataclass(frozen=True)
class Officer:
    """Who is calling: the person, the identity that made them one, and their certificate."""

    person: str
    identity: str
    certificate: bytes

    def endorse(self, role: Role, signature: bytes, signed_at: int | None = None) -> Endorsement:
        """This officer's endorsement of a change with ``signature`` (made at ``signed_at``)."""
        return Endorsement(role, self.person, self.identity, self.certificate, signature, signed_at)


def officer_of(
    auth_context: Mapping[str, Sequence[bytes]],
    claimed: str,
    person_of: Callable[[Iterable[str]], tuple[str, str] | None],
) -> Officer:
    """The calling officer. With mutual TLS the person is the one of ``[officers]`` that owns
    one of the certificate's identities (a claimed name is ignored); without TLS (dev only)
    it is the claimed name, folded to lower case so that "Alice" and "alice" are one person."""
    names = certificate_identities(auth_context)
    if names:
        owner = person_of(names)
        if owner is None:
            raise PermissionDenied("this certificate belongs to no person under [officers]")
        pem = auth_context.get("x509_pem_cert", [b""])[0]
        der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        return Officer(owner[0], owner[1], der)
    person = claimed.strip().casefold()
    if not person:
        raise InvalidRequest("officer is required: say who you are (e.g. --officer alice)")
    if len(person) > MAX_OFFICER_CHARS or not person.isprintable():
        raise InvalidRequest(
            f"officer {shown(claimed)} is not a name: at most {MAX_OFFICER_CHARS} printable"
            " characters (e.g. --officer alice)"
        )
    return Officer(person, person, b"")


def key_info(view: KeyView, signatures_total: int = 0) -> key_admin_pb2.KeyInfo:
    """The API form of a key; ``signatures_total`` counts what this daemon signed with it."""
    r = view.record
    return key_admin_pb2.KeyInfo(
        key_id=r.key_id,
        profile=r.profile,
        label=r.label,
        state=r.state.value,
        effective_state=view.effective_state,
        kid=r.kid or b"",
        dsc_der=view.dsc_der or b"",
        not_before=timestamp(r.dsc_not_before),
        not_after=timestamp(r.dsc_not_after),
        created_at=timestamp(r.created_at),
        activate_at=timestamp(r.activate_at),
        usable_until=timestamp(view.usable_until),
        signatures_total=signatures_total,
        revoked_at=timestamp(r.revoked_at),
        signs_new_requests=view.signs_new_requests,
        overlap_ends=timestamp(view.overlap_ends),
    )


def change_info(change: PendingChange) -> key_admin_pb2.PendingChange:
    """The API form of a pending change, with the document approvers sign."""
    document = change.document
    return key_admin_pb2.PendingChange(
        change_id=change.change_id,
        action=change.action,
        key_id=change.key_id,
        requested_by=change.requested_by,
        approvals=list(change.approvals),
        requested_at=timestamp(document.requested_at),
        expires_at=timestamp(change.expires_at),
        activate_at=timestamp(document.activate_at),
        force=document.force,
        reason=document.reason,
        document=change.signed.document,
    )


def _outcome(outcome: ChangeOutcome) -> key_admin_pb2.ChangeResponse:
    return key_admin_pb2.ChangeResponse(
        change=change_info(outcome.change), applied=outcome.applied, key=key_info(outcome.key)
    )


class KeyAdminService(key_admin_pb2_grpc.KeyAdminServicer):
    """The officer-facing API."""

    def __init__(
        self,
        ceremonies: KeyCeremonies,
        metrics: Metrics,
        on_change: Callable[[], None],
        audit_healthy: Callable[[], bool],
        store_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self._ceremonies = ceremonies
        self._metrics = metrics
        self._on_change = on_change
        self._audit_healthy = audit_healthy
        self._store_ready = store_ready

    def _caller(self, context: grpc.ServicerContext, claimed: str) -> Officer:
        """Who asks for a change; refused while key events cannot be audited, or while the
        record store is known to be unreachable (``store_ready`` raises StoreUnavailable naming
        it), before anything is generated in the HSM."""
        if not self._audit_healthy():
            raise AuditError(
                "the audit log cannot be written, so key changes are refused until it recovers"
            )
        self._store_ready()
        return officer_of(
            context.auth_context(), claimed, self._ceremonies.registry.governance.officers.person_of
        )

    def _officer(self, context: grpc.ServicerContext, claimed: str) -> str:
        return self._caller(context, claimed).person

    def _change(
        self,
        context: grpc.ServicerContext,
        claimed: str,
        action: Action,
        key_id: str,
        document: bytes,
        signature: bytes,
        activate_at: datetime | None = None,
        reason: str = "",
        force: bool = False,
    ) -> key_admin_pb2.ChangeResponse:
        """Request a change from its signed document (or, without TLS, draft it here)."""
        officer = self._caller(context, claimed)
        if not document:
            if self._ceremonies.registry.governance.enforced:
                raise InvalidRequest(
                    "a key change must be signed: draft it with DraftChange, sign the document"
                    " with your client certificate's key and send both (`signer keys` does)"
                )
            document = self._draft(officer, action, key_id, activate_at, reason, force).encode()
        drafted = ChangeDocument.decode(document)
        if drafted.action != action or drafted.key_id != key_id:
            raise InvalidRequest(
                f"the signed document is a {drafted.action} of key {drafted.key_id}, not a"
                f" {action} of key {key_id[:40]}"
            )
        outcome = self._ceremonies.request_change(document, officer.endorse("request", signature))
        self._on_change()
        return _outcome(outcome)

    def _draft(
        self,
        officer: Officer,
        action: Action,
        key_id: str,
        activate_at: datetime | None = None,
        reason: str = "",
        force: bool = False,
    ) -> ChangeDocument:
        if len(reason) > _MAX_REASON or not reason.isprintable():
            raise InvalidRequest(f"a reason is at most {_MAX_REASON} printable characters")
        return self._ceremonies.draft(
            action, key_id, officer.person, activate_at=activate_at, reason=reason, force=force
        )

    def DraftChange(
        self, request: key_admin_pb2.DraftChangeRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.DraftChangeResponse:
        """The canonical document of a change, for the officer to check and sign."""
        if request.action not in ACTIONS:
            raise InvalidRequest(
                f"action {request.action[:20]!r} is not one of {', '.join(ACTIONS)}"
            )
        at = request.activate_at.ToDatetime(tzinfo=UTC) if request.HasField("activate_at") else None
        document = self._draft(
            self._caller(context, request.officer),
            cast(Action, request.action),
            request.key_id,
            activate_at=at,
            reason=request.reason,
            force=request.force,
        )
        return key_admin_pb2.DraftChangeResponse(document=document.encode())

    def GenerateKey(
        self, request: key_admin_pb2.GenerateKeyRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.GenerateKeyResponse:
        """Generate a key in the HSM and return its CSR."""
        officer = self._officer(context, request.officer)
        view, csr = self._ceremonies.generate(request.profile, request.label, officer)
        return key_admin_pb2.GenerateKeyResponse(key=key_info(view), csr_der=csr)

    def GetCsr(
        self, request: key_admin_pb2.GetCsrRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.GetCsrResponse:
        """The CSR of a key, again."""
        return key_admin_pb2.GetCsrResponse(csr_der=self._ceremonies.csr(request.key_id))

    def ImportCertificate(
        self, request: key_admin_pb2.ImportCertificateRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.KeyInfo:
        """Check and store the DSC the CSCA issued for a key."""
        officer = self._officer(context, request.officer)
        view = self._ceremonies.import_certificate(request.key_id, request.certificate, officer)
        return key_info(view)

    def Activate(
        self, request: key_admin_pb2.ActivateRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Request a scheduled activation (applied once enough persons signed)."""
        at = request.activate_at.ToDatetime(tzinfo=UTC) if request.HasField("activate_at") else None
        return self._change(
            context,
            request.officer,
            "activate",
            request.key_id,
            request.document,
            request.signature,
            activate_at=at,
        )

    def Retire(
        self, request: key_admin_pb2.RetireRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Request retirement of a key."""
        return self._change(
            context,
            request.officer,
            "retire",
            request.key_id,
            request.document,
            request.signature,
            reason=request.reason,
            force=request.force,
        )

    def Destroy(
        self, request: key_admin_pb2.DestroyRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Request destruction of a retired or revoked key's private key."""
        return self._change(
            context,
            request.officer,
            "destroy",
            request.key_id,
            request.document,
            request.signature,
            reason=request.reason,
            force=request.force,
        )

    def Revoke(
        self, request: key_admin_pb2.RevokeRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Withdraw a compromised key at once."""
        return self._change(
            context,
            request.officer,
            "revoke",
            request.key_id,
            request.document,
            request.signature,
            reason=request.reason,
        )

    def Approve(
        self, request: key_admin_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Approve another person's pending change with a signature over its document."""
        officer = self._caller(context, request.officer)
        outcome = self._ceremonies.approve(
            request.change_id,
            officer.endorse("approve", request.signature, request.signed_at_unix or None),
        )
        self._on_change()
        return _outcome(outcome)

    def ListKeys(
        self, request: key_admin_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ListKeysResponse:
        """All keys with their states and how many signatures this daemon made with each
        since it started (``signatures_total``; the audit log holds the full history)."""
        signed = self._signatures_by_kid()
        return key_admin_pb2.ListKeysResponse(
            keys=[
                key_info(v, signed.get((v.record.kid or b"").hex(), 0))
                for v in self._ceremonies.registry.list_keys(request.profile)
            ]
        )

    def _signatures_by_kid(self) -> dict[str, int]:
        """kid (hex) -> signatures returned since this daemon started (its metrics counter).

        The counter is per daemon and starts at zero with it; the audit log holds the full
        history of every key.
        """
        totals: dict[str, int] = {}
        for metric in self._metrics.signatures.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and "kid" in sample.labels:
                    kid = sample.labels["kid"]
                    totals[kid] = totals.get(kid, 0) + int(sample.value)
        return totals

    def ListChanges(
        self, request: key_admin_pb2.ListChangesRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ListChangesResponse:
        """Changes waiting for a second officer."""
        return key_admin_pb2.ListChangesResponse(
            changes=[change_info(c) for c in self._ceremonies.pending_changes()]
        )
