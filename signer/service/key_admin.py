"""``signer.v1.KeyAdmin``: key ceremonies for security officers, under dual control."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc

from signer.errors import AuditError, InvalidRequest
from signer.keys.ceremony import ChangeOutcome, KeyCeremonies
from signer.keys.dual_control import PendingChange
from signer.keys.snapshot import KeyView
from signer.service.auth import Roles, certificate_identities, role_identity
from signer.service.metrics import Metrics
from signer.service.signing import timestamp
from signer.v1 import key_admin_pb2, key_admin_pb2_grpc


def officer_identity(context: grpc.ServicerContext, claimed: str, roles: Roles) -> str:
    """The officer: the certificate identity that holds the officer role, else the request field.

    Without mTLS (allowed only in dev configurations) the identity is whatever the caller
    claims; with mTLS a claimed identity is ignored and dual control counts the configured
    officer identities, so one officer with two certificates is still one officer.
    """
    names = certificate_identities(context.auth_context())
    if names:
        return role_identity(context, roles, "officer") or names[0]
    if not claimed.strip():
        raise InvalidRequest("officer is required: say who you are (e.g. --officer alice)")
    return claimed.strip()


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
    )


def change_info(change: PendingChange) -> key_admin_pb2.PendingChange:
    """The API form of a pending change."""
    at = change.params.get("activate_at")
    return key_admin_pb2.PendingChange(
        change_id=change.change_id,
        action=change.action,
        key_id=change.key_id,
        requested_by=change.requested_by,
        approvals=list(change.approvals),
        requested_at=timestamp(change.requested_at),
        expires_at=timestamp(change.expires_at),
        activate_at=timestamp(at) if isinstance(at, datetime) else None,
        force=bool(change.params.get("force")),
        reason=str(change.params.get("reason") or ""),
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
        roles: Roles,
        audit_healthy: Callable[[], bool],
    ) -> None:
        self._ceremonies = ceremonies
        self._metrics = metrics
        self._on_change = on_change
        self._roles = roles
        self._audit_healthy = audit_healthy

    def _officer(self, context: grpc.ServicerContext, claimed: str) -> str:
        """Who asks for a change; refused while key events cannot be audited."""
        if not self._audit_healthy():
            raise AuditError(
                "the audit log cannot be written, so key changes are refused until it recovers"
            )
        return officer_identity(context, claimed, self._roles)

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
        """Request (or, with one approval required, perform) a scheduled activation."""
        officer = self._officer(context, request.officer)
        at = request.activate_at.ToDatetime(tzinfo=UTC) if request.HasField("activate_at") else None
        outcome = self._ceremonies.request_change(
            "activate", request.key_id, officer, {"activate_at": at}
        )
        self._on_change()
        return _outcome(outcome)

    def Retire(
        self, request: key_admin_pb2.RetireRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Request retirement of a key."""
        officer = self._officer(context, request.officer)
        outcome = self._ceremonies.request_change(
            "retire", request.key_id, officer, {"reason": request.reason}
        )
        self._on_change()
        return _outcome(outcome)

    def Destroy(
        self, request: key_admin_pb2.DestroyRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Request destruction of a retired key's private key."""
        officer = self._officer(context, request.officer)
        outcome = self._ceremonies.request_change(
            "destroy", request.key_id, officer, {"force": request.force, "reason": request.reason}
        )
        self._on_change()
        return _outcome(outcome)

    def Approve(
        self, request: key_admin_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ChangeResponse:
        """Approve another officer's pending change."""
        officer = self._officer(context, request.officer)
        outcome = self._ceremonies.approve(request.change_id, officer)
        self._on_change()
        return _outcome(outcome)

    def ListKeys(
        self, request: key_admin_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> key_admin_pb2.ListKeysResponse:
        """All keys with their states and how many signatures this daemon made with each."""
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
