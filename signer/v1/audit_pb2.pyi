import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyLogRequest(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class VerifyLogResponse(_message.Message):
    __slots__ = ("ok", "records", "checkpoints", "fault", "first_bad_sequence", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    checkpoints: int
    fault: str
    first_bad_sequence: int
    message: str
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., checkpoints: _Optional[int] = ..., fault: _Optional[str] = ..., first_bad_sequence: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FindByDigestRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    def __init__(self, digest: _Optional[bytes] = ...) -> None: ...

class AuditMatch(_message.Message):
    __slots__ = ("sequence", "time", "event", "identity", "profile", "kid", "request_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    event: str
    identity: str
    profile: str
    kid: bytes
    request_id: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event: _Optional[str] = ..., identity: _Optional[str] = ..., profile: _Optional[str] = ..., kid: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class FindByDigestResponse(_message.Message):
    __slots__ = ("matches",)
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[AuditMatch]
    def __init__(self, matches: _Optional[_Iterable[_Union[AuditMatch, _Mapping]]] = ...) -> None: ...

class GetLatestCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("note", "size", "audit_public_key_spki")
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PUBLIC_KEY_SPKI_FIELD_NUMBER: _ClassVar[int]
    note: str
    size: int
    audit_public_key_spki: bytes
    def __init__(self, note: _Optional[str] = ..., size: _Optional[int] = ..., audit_public_key_spki: _Optional[bytes] = ...) -> None: ...

class ReadRecordsRequest(_message.Message):
    __slots__ = ("after_sequence", "max_records")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    max_records: int
    def __init__(self, after_sequence: _Optional[int] = ..., max_records: _Optional[int] = ...) -> None: ...

class RecordFrames(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: bytes
    def __init__(self, frames: _Optional[bytes] = ...) -> None: ...

class FindSignaturesRequest(_message.Message):
    __slots__ = ("identity", "since", "until", "kid")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    identity: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    kid: bytes
    def __init__(self, identity: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kid: _Optional[bytes] = ...) -> None: ...

class SignatureHash(_message.Message):
    __slots__ = ("kid", "hash", "sequence", "signed_at")
    KID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    kid: bytes
    hash: bytes
    sequence: int
    signed_at: _timestamp_pb2.Timestamp
    def __init__(self, kid: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., sequence: _Optional[int] = ..., signed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignatureHashes(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[SignatureHash]
    def __init__(self, entries: _Optional[_Iterable[_Union[SignatureHash, _Mapping]]] = ...) -> None: ...
