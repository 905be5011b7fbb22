"""An officer's side of a key change: check what the daemon drafted, sign it, send it.

The daemon drafts the canonical change document (it knows the officer's person name and the
key's profile); this module decodes it and refuses to sign anything other than what the
officer asked for, so a compromised daemon cannot slip a different change under a signature.
The signature is made with the private key of the officer's client certificate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from signer.errors import ConfigError, SignerError
from signer.keys.governance import Action, ChangeDocument, Role, SigningKey, sign_document
from signer.v1 import key_admin_pb2, key_admin_pb2_grpc
from signer.v1.key_admin_pb2 import ChangeResponse


class DraftMismatch(SignerError):
    """The daemon drafted a different change than the officer asked for; nothing was signed."""


@dataclass(frozen=True)
class OfficerCredential:
    """The officer's certificate (DER) and the private key that signs their changes."""

    certificate_der: bytes
    key: SigningKey

    @classmethod
    def from_files(cls, cert: Path, key: Path) -> OfficerCredential:
        """Load a PEM client certificate and its unencrypted PEM private key."""
        try:
            certificate = x509.load_pem_x509_certificate(cert.read_bytes())
            private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load the officer key pair {cert} / {key}: {exc}") from None
        if not isinstance(
            private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise ConfigError(f"{key}: an officer key must be EC, RSA or Ed25519")
        return cls(certificate.public_bytes(serialization.Encoding.DER), private)

    def sign(self, role: Role, document: bytes, signed_at: int | None = None) -> bytes:
        """This officer's signature over a change document (and the time of signing)."""
        return sign_document(self.key, role, document, signed_at)


def check_draft(
    document: bytes,
    *,
    action: Action,
    key_id: str,
    activate_at: datetime | None = None,
    reason: str = "",
    force: bool = False,
) -> ChangeDocument:
    """Decode a drafted document and refuse it unless it is exactly the change asked for."""
    change = ChangeDocument.decode(document)
    asked = (action, key_id, activate_at, reason, force)
    got = (change.action, change.key_id, change.activate_at, change.reason, change.force)
    if asked != got:
        raise DraftMismatch(
            f"the daemon drafted {got!r} but you asked for {asked!r}; nothing was signed"
        )
    return change


class OfficerSession:
    """KeyAdmin calls that request and approve changes, signed when a credential is given.

    Without a credential (a dev daemon without TLS) requests go unsigned and the daemon
    takes the claimed ``officer`` name.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        credential: OfficerCredential | None,
        officer: str = "",
        timeout: float = 30.0,
    ) -> None:
        self._stub = key_admin_pb2_grpc.KeyAdminStub(channel)
        self._credential = credential
        self._officer = officer
        self._timeout = timeout

    def _sign(self, role: Role, document: bytes, signed_at: int | None = None) -> bytes:
        return self._credential.sign(role, document, signed_at) if self._credential else b""

    def request(
        self,
        action: Action,
        key_id: str,
        *,
        activate_at: datetime | None = None,
        reason: str = "",
        force: bool = False,
    ) -> ChangeResponse:
        """Draft, check, sign and send one change request."""
        draft = key_admin_pb2.DraftChangeRequest(
            action=action, key_id=key_id, reason=reason, force=force, officer=self._officer
        )
        if activate_at is not None:
            draft.activate_at.FromDatetime(activate_at)
        document = self._stub.DraftChange(draft, timeout=self._timeout).document
        check_draft(
            document,
            action=action,
            key_id=key_id,
            activate_at=activate_at,
            reason=reason,
            force=force,
        )
        signed = {
            "key_id": key_id,
            "officer": self._officer,
            "document": document,
            "signature": self._sign("request", document),
        }
        reply: ChangeResponse
        if action == "activate":
            reply = self._stub.Activate(
                key_admin_pb2.ActivateRequest(**signed), timeout=self._timeout
            )
        elif action == "retire":
            retire = key_admin_pb2.RetireRequest(reason=reason, force=force, **signed)
            reply = self._stub.Retire(retire, timeout=self._timeout)
        elif action == "destroy":
            destroy = key_admin_pb2.DestroyRequest(reason=reason, force=force, **signed)
            reply = self._stub.Destroy(destroy, timeout=self._timeout)
        else:
            revoke = key_admin_pb2.RevokeRequest(reason=reason, **signed)
            reply = self._stub.Revoke(revoke, timeout=self._timeout)
        return reply

    def pending(self, change_id: str) -> key_admin_pb2.PendingChange:
        """One pending change, with the document an approver signs."""
        listed: key_admin_pb2.ListChangesResponse = self._stub.ListChanges(
            key_admin_pb2.ListChangesRequest(), timeout=self._timeout
        )
        for change in listed.changes:
            if change.change_id == change_id:
                return change
        raise DraftMismatch(
            f"no pending change {change_id[:40]!r}; `signer keys changes` lists them"
        )

    def approve(self, change_id: str) -> ChangeResponse:
        """Sign the pending change's document as an approval and send it."""
        change = self.pending(change_id)
        ChangeDocument.decode(change.document)  # refuse to sign bytes that are no document
        signed_at = int(time.time())
        message = key_admin_pb2.ApproveRequest(
            change_id=change_id,
            officer=self._officer,
            signature=self._sign("approve", change.document, signed_at),
            signed_at_unix=signed_at,
        )
        reply: ChangeResponse = self._stub.Approve(message, timeout=self._timeout)
        return reply
