"""Dual control of key changes: a change is requested by one officer and approved by another.

Pure logic over :class:`PendingChange` records (stored by the caller, for example next to the
key records on the token). The requester counts as the first approval; with
``approvals_required=2`` a different identity must approve, with 1 (development) the request
alone is enough.
"""

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal, cast

from signer.errors import PolicyError
from signer.keys.cbor_fields import FieldReader, encode
from signer.keys.utc import require_utc, to_unix

CHANGE_FORMAT_VERSION: Final = 1
ACTIONS: Final = ("activate", "retire", "destroy")
DEFAULT_CHANGE_TTL: Final = timedelta(hours=24)

Action = Literal["activate", "retire", "destroy"]
ParamValue = str | bool | int | datetime | None
"""Parameter values: e.g. ``activate_at`` (datetime), ``force`` (bool), ``reason`` (str)."""


def _freeze(params: Mapping[str, ParamValue]) -> Mapping[str, ParamValue]:
    frozen: dict[str, ParamValue] = {}
    for name, value in params.items():
        if isinstance(value, datetime):
            value = require_utc(value, f"parameter {name}")
        elif value is not None and not isinstance(value, str | bool | int):
            raise PolicyError(
                f"change parameter check failed: {name} has type {type(value).__name__}; "
                "use text, bool, int or a datetime"
            )
        frozen[name] = value
    return MappingProxyType(frozen)


@dataclass(frozen=True)
class PendingChange:
    """A requested key change waiting for approval."""

    change_id: str
    action: Action
    key_id: str
    params: Mapping[str, ParamValue]
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    approvals: tuple[str, ...] = ()
    """Identities that approved, other than the requester, in order."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PolicyError(
                f"change check failed: unknown action {self.action!r}; use one of "
                f"{', '.join(ACTIONS)}"
            )
        if not self.requested_by.strip():
            raise PolicyError("change check failed: a change must name who requested it")
        object.__setattr__(self, "params", _freeze(self.params))

    def is_complete(self, approvals_required: int) -> bool:
        """Whether the requester plus the approvers reach ``approvals_required``."""
        return 1 + len(self.approvals) >= _require_count(approvals_required)

    def to_cbor(self) -> bytes:
        """Canonical CBOR with a format version; datetime parameters as ``{"time": seconds}``."""
        params: dict[str, object] = {}
        for name, value in self.params.items():
            params[name] = {"time": to_unix(value)} if isinstance(value, datetime) else value
        return encode(
            {
                "v": CHANGE_FORMAT_VERSION,
                "change_id": self.change_id,
                "action": self.action,
                "key_id": self.key_id,
                "params": params,
                "requested_by": self.requested_by,
                "requested_at": to_unix(self.requested_at),
                "expires_at": to_unix(self.expires_at),
                "approvals": list(self.approvals),
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> "PendingChange":
        """Decode :meth:`to_cbor` output; raises ``RecordFormatError`` on any deviation."""
        reader = FieldReader(data, "pending change", CHANGE_FORMAT_VERSION)
        action = reader.text("action")
        if action not in ACTIONS:
            raise reader.error(f"unknown action {action!r}")
        params: dict[str, ParamValue] = {}
        for name, value in reader.mapping("params").items():
            if isinstance(value, dict) and set(value) == {"time"}:
                params[name] = reader.to_time(f"params.{name}", value["time"])
            elif value is None or isinstance(value, str | bool | int):
                params[name] = value
            else:
                raise reader.error(f"parameter {name!r} has type {type(value).__name__}")
        approvals = reader.array("approvals")
        if not all(isinstance(a, str) for a in approvals):
            raise reader.error("approvals must be text identities")
        change = cls(
            change_id=reader.text("change_id"),
            action=cast(Action, action),
            key_id=reader.text("key_id"),
            params=params,
            requested_by=reader.text("requested_by"),
            requested_at=reader.time("requested_at"),
            expires_at=reader.time("expires_at"),
            approvals=tuple(approvals),
        )
        reader.finish()
        return change


def _require_count(approvals_required: int) -> int:
    if approvals_required < 1:
        raise PolicyError(
            f"dual control check failed: approvals_required is {approvals_required}; it must "
            "be 1 (development) or 2 (production dual control)"
        )
    return approvals_required


def request_change(
    *,
    action: Action,
    key_id: str,
    params: Mapping[str, ParamValue],
    requested_by: str,
    now: datetime,
    ttl: timedelta = DEFAULT_CHANGE_TTL,
) -> PendingChange:
    """A new pending change with a random id, expiring ``ttl`` after ``now``."""
    if ttl <= timedelta(0):
        raise PolicyError("change check failed: the approval window (ttl) must be positive")
    moment = require_utc(now, "now")
    return PendingChange(
        change_id=secrets.token_hex(8),
        action=action,
        key_id=key_id,
        params=params,
        requested_by=requested_by,
        requested_at=moment,
        expires_at=moment + ttl,
    )


def approve(
    change: PendingChange, approver: str, now: datetime, approvals_required: int
) -> tuple[PendingChange, bool]:
    """Record ``approver``'s approval; return the new change and whether it may now be applied.

    Refused with :class:`PolicyError`: an empty identity, the requester approving their own
    change, the same identity approving twice, and an expired change. Identities compare
    without regard to case, so "Alice" cannot approve a change "alice" requested.
    """
    required = _require_count(approvals_required)
    moment = require_utc(now, "now")
    who = approver.strip()
    if not who:
        raise PolicyError("approval refused: the approver's identity is empty")
    if moment >= change.expires_at:
        raise PolicyError(
            f"approval refused: change {change.change_id} expired at "
            f"{change.expires_at.isoformat()}; request the change again"
        )
    if who.casefold() == change.requested_by.strip().casefold():
        raise PolicyError(
            f"approval refused: {who} requested change {change.change_id} and cannot approve "
            "it; a second officer must approve"
        )
    if who.casefold() in (a.casefold() for a in change.approvals):
        raise PolicyError(
            f"approval refused: {who} already approved change {change.change_id}; another "
            "officer must approve"
        )
    approved = replace(change, approvals=(*change.approvals, who))
    return approved, approved.is_complete(required)
