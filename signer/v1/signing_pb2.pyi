import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignatureFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_FORMAT_UNSPECIFIED: _ClassVar[SignatureFormat]
    SIGNATURE_FORMAT_RAW: _ClassVar[SignatureFormat]
    SIGNATURE_FORMAT_DER: _ClassVar[SignatureFormat]
SIGNATURE_FORMAT_UNSPECIFIED: SignatureFormat
SIGNATURE_FORMAT_RAW: SignatureFormat
SIGNATURE_FORMAT_DER: SignatureFormat

class GetSigningKeyRequest(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    def __init__(self, profile: _Optional[str] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("profile", "kid", "algorithm", "dsc_der", "public_key_spki", "not_after", "usable_until", "key_id", "max_batch")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DSC_DER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_SPKI_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    USABLE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    profile: str
    kid: bytes
    algorithm: str
    dsc_der: bytes
    public_key_spki: bytes
    not_after: _timestamp_pb2.Timestamp
    usable_until: _timestamp_pb2.Timestamp
    key_id: str
    max_batch: int
    def __init__(self, profile: _Optional[str] = ..., kid: _Optional[bytes] = ..., algorithm: _Optional[str] = ..., dsc_der: _Optional[bytes] = ..., public_key_spki: _Optional[bytes] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usable_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., max_batch: _Optional[int] = ...) -> None: ...

class SignBatchRequest(_message.Message):
    __slots__ = ("profile", "kid", "digests", "format", "request_id", "packed_digests")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PACKED_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    profile: str
    kid: bytes
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    format: SignatureFormat
    request_id: str
    packed_digests: bytes
    def __init__(self, profile: _Optional[str] = ..., kid: _Optional[bytes] = ..., digests: _Optional[_Iterable[bytes]] = ..., format: _Optional[_Union[SignatureFormat, str]] = ..., request_id: _Optional[str] = ..., packed_digests: _Optional[bytes] = ...) -> None: ...

class SignBatchResponse(_message.Message):
    __slots__ = ("signatures", "kid", "audit_sequence", "request_id", "packed_signatures")
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PACKED_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    kid: bytes
    audit_sequence: int
    request_id: str
    packed_signatures: bytes
    def __init__(self, signatures: _Optional[_Iterable[bytes]] = ..., kid: _Optional[bytes] = ..., audit_sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., packed_signatures: _Optional[bytes] = ...) -> None: ...

class GetTrustListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrustListEntry(_message.Message):
    __slots__ = ("kid", "profile", "state", "dsc_der", "not_before", "not_after")
    KID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DSC_DER_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    kid: bytes
    profile: str
    state: str
    dsc_der: bytes
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, kid: _Optional[bytes] = ..., profile: _Optional[str] = ..., state: _Optional[str] = ..., dsc_der: _Optional[bytes] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RevokedKey(_message.Message):
    __slots__ = ("kid", "profile", "revoked_at")
    KID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    kid: bytes
    profile: str
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, kid: _Optional[bytes] = ..., profile: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrustList(_message.Message):
    __slots__ = ("entries", "revoked")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TrustListEntry]
    revoked: _containers.RepeatedCompositeFieldContainer[RevokedKey]
    def __init__(self, entries: _Optional[_Iterable[_Union[TrustListEntry, _Mapping]]] = ..., revoked: _Optional[_Iterable[_Union[RevokedKey, _Mapping]]] = ...) -> None: ...
