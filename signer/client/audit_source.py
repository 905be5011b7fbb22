"""The appliance's ``signer.v1.Audit`` service as a source for the auditor's mirror.

:class:`GrpcAuditSource` implements :class:`signer.audit.mirror.AuditSource` with the
existing ``GetLatestCheckpoint`` and the streaming ``ReadRecords`` RPC (role auditor). gRPC
errors are raised as they come; the command line turns them into exit codes.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from signer.audit.stored import split_frames
from signer.v1 import audit_pb2, audit_pb2_grpc

DEFAULT_TIMEOUT = 30.0
"""Seconds for one checkpoint or single-record call."""
STREAM_TIMEOUT = 3600.0
"""Seconds for a whole record stream: the first pull of a large log takes a while."""


class GrpcAuditSource:
    """Records and checkpoints of one appliance, over an open channel (not closed here)."""

    def __init__(
        self,
        channel: grpc.Channel,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self._stub = audit_pb2_grpc.AuditStub(channel)
        self._address = address
        self._timeout = timeout
        self._stream_timeout = stream_timeout

    @property
    def name(self) -> str:
        """The appliance address, for messages."""
        return self._address

    def checkpoint(self) -> audit_pb2.Checkpoint:
        """The newest signed checkpoint with its size and the audit key the daemon uses."""
        reply: audit_pb2.Checkpoint = self._stub.GetLatestCheckpoint(
            audit_pb2.GetLatestCheckpointRequest(), timeout=self._timeout
        )
        return reply

    def latest_checkpoint(self) -> str:
        """The newest signed checkpoint note."""
        return str(self.checkpoint().note)

    def records_after(self, seq: int, limit: int | None = None) -> Iterator[bytes]:
        """The stored records after ``seq``; closing the iterator early cancels the call."""
        request = audit_pb2.ReadRecordsRequest(after_sequence=seq, max_records=limit or 0)
        timeout = self._timeout if limit is not None else self._stream_timeout
        responses = self._stub.ReadRecords(request, timeout=timeout)
        try:
            yield from split_frames(message.frames for message in responses)
        finally:
            responses.cancel()
