import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyInfo(_message.Message):
    __slots__ = ("key_id", "profile", "label", "state", "effective_state", "kid", "dsc_der", "not_before", "not_after", "created_at", "activate_at", "usable_until", "signatures_total", "revoked_at", "signs_new_requests", "overlap_ends")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_STATE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    DSC_DER_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_AT_FIELD_NUMBER: _ClassVar[int]
    USABLE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNS_NEW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_ENDS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    profile: str
    label: str
    state: str
    effective_state: str
    kid: bytes
    dsc_der: bytes
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    activate_at: _timestamp_pb2.Timestamp
    usable_until: _timestamp_pb2.Timestamp
    signatures_total: int
    revoked_at: _timestamp_pb2.Timestamp
    signs_new_requests: bool
    overlap_ends: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., profile: _Optional[str] = ..., label: _Optional[str] = ..., state: _Optional[str] = ..., effective_state: _Optional[str] = ..., kid: _Optional[bytes] = ..., dsc_der: _Optional[bytes] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., activate_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usable_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signatures_total: _Optional[int] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signs_new_requests: _Optional[bool] = ..., overlap_ends: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PendingChange(_message.Message):
    __slots__ = ("change_id", "action", "key_id", "requested_by", "approvals", "requested_at", "expires_at", "activate_at", "force", "reason", "document")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_AT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    change_id: str
    action: str
    key_id: str
    requested_by: str
    approvals: _containers.RepeatedScalarFieldContainer[str]
    requested_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    activate_at: _timestamp_pb2.Timestamp
    force: bool
    reason: str
    document: bytes
    def __init__(self, change_id: _Optional[str] = ..., action: _Optional[str] = ..., key_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., approvals: _Optional[_Iterable[str]] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., activate_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., force: _Optional[bool] = ..., reason: _Optional[str] = ..., document: _Optional[bytes] = ...) -> None: ...

class GenerateKeyRequest(_message.Message):
    __slots__ = ("profile", "label", "officer")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    profile: str
    label: str
    officer: str
    def __init__(self, profile: _Optional[str] = ..., label: _Optional[str] = ..., officer: _Optional[str] = ...) -> None: ...

class GenerateKeyResponse(_message.Message):
    __slots__ = ("key", "csr_der")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    csr_der: bytes
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., csr_der: _Optional[bytes] = ...) -> None: ...

class GetCsrRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetCsrResponse(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...

class ImportCertificateRequest(_message.Message):
    __slots__ = ("key_id", "certificate", "officer")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    certificate: bytes
    officer: str
    def __init__(self, key_id: _Optional[str] = ..., certificate: _Optional[bytes] = ..., officer: _Optional[str] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("key_id", "activate_at", "officer", "document", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_AT_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    activate_at: _timestamp_pb2.Timestamp
    officer: str
    document: bytes
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., activate_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., officer: _Optional[str] = ..., document: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RetireRequest(_message.Message):
    __slots__ = ("key_id", "reason", "officer", "document", "signature", "force")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    reason: str
    officer: str
    document: bytes
    signature: bytes
    force: bool
    def __init__(self, key_id: _Optional[str] = ..., reason: _Optional[str] = ..., officer: _Optional[str] = ..., document: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., force: _Optional[bool] = ...) -> None: ...

class DestroyRequest(_message.Message):
    __slots__ = ("key_id", "force", "reason", "officer", "document", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    force: bool
    reason: str
    officer: str
    document: bytes
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., force: _Optional[bool] = ..., reason: _Optional[str] = ..., officer: _Optional[str] = ..., document: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("change_id", "officer", "signature", "signed_at_unix")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    change_id: str
    officer: str
    signature: bytes
    signed_at_unix: int
    def __init__(self, change_id: _Optional[str] = ..., officer: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_at_unix: _Optional[int] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("key_id", "reason", "officer", "document", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    reason: str
    officer: str
    document: bytes
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., reason: _Optional[str] = ..., officer: _Optional[str] = ..., document: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DraftChangeRequest(_message.Message):
    __slots__ = ("action", "key_id", "activate_at", "reason", "force", "officer")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    action: str
    key_id: str
    activate_at: _timestamp_pb2.Timestamp
    reason: str
    force: bool
    officer: str
    def __init__(self, action: _Optional[str] = ..., key_id: _Optional[str] = ..., activate_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ..., officer: _Optional[str] = ...) -> None: ...

class DraftChangeResponse(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: bytes
    def __init__(self, document: _Optional[bytes] = ...) -> None: ...

class ChangeResponse(_message.Message):
    __slots__ = ("change", "applied", "key")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    change: PendingChange
    applied: bool
    key: KeyInfo
    def __init__(self, change: _Optional[_Union[PendingChange, _Mapping]] = ..., applied: _Optional[bool] = ..., key: _Optional[_Union[KeyInfo, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    def __init__(self, profile: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class ListChangesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListChangesResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[PendingChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[PendingChange, _Mapping]]] = ...) -> None: ...
