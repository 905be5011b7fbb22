"""Pure checks of incoming requests, done before anything reaches the HSM."""

from __future__ import annotations

from collections.abc import Sequence

from signer.errors import InvalidRequest
from signer.service.echo import shown
from signer.sigformat import SHA256_DIGEST_BYTES, SignatureEncoding

MAX_REQUEST_ID_CHARS = 128
MAX_PROFILE_CHARS = 64
KID_BYTES = 8
"""A kid is the first 8 bytes of SHA-256 over the DSC (DESIGN.md §2)."""


def check_count(count: int, max_batch: int) -> None:
    """Refuse an empty or oversized batch."""
    if not count:
        raise InvalidRequest("the batch is empty: send at least one SHA-256 digest")
    if count > max_batch:
        raise InvalidRequest(
            f"the batch has {count} digests, more than this server's max_batch of "
            f"{max_batch}; split it into batches of at most {max_batch}"
        )


def check_digests(digests: Sequence[bytes], max_batch: int) -> None:
    """Refuse an empty or oversized batch and any digest that is not exactly 32 bytes."""
    check_count(len(digests), max_batch)
    for index, digest in enumerate(digests):
        if len(digest) != SHA256_DIGEST_BYTES:
            raise InvalidRequest(
                f"digests[{index}] is {len(digest)} bytes; every digest must be a SHA-256 "
                f"digest of exactly {SHA256_DIGEST_BYTES} bytes"
            )


def read_digests(
    digests: Sequence[bytes], packed: bytes, max_batch: int
) -> tuple[list[bytes], bytes]:
    """The digests of a request, one ``bytes`` each and packed, from either of its two forms.

    Refuses both forms at once, a packed length that is not a whole number of digests, and
    what :func:`check_digests` refuses.
    """
    step = SHA256_DIGEST_BYTES
    if packed:
        if digests:
            raise InvalidRequest(
                "send the digests either in digests or in packed_digests, not in both"
            )
        if len(packed) % step:
            raise InvalidRequest(
                f"packed_digests is {len(packed)} bytes, not a multiple of {step}: it must hold"
                f" whole SHA-256 digests of {step} bytes each"
            )
        check_count(len(packed) // step, max_batch)
        return [packed[i : i + step] for i in range(0, len(packed), step)], packed
    listed = list(digests)
    check_digests(listed, max_batch)
    return listed, b"".join(listed)


def check_request_id(request_id: str) -> str:
    """Refuse request ids that would bloat the audit log or the logs."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(
            f"request_id {shown(request_id)} is longer than {MAX_REQUEST_ID_CHARS} characters"
        )
    if not request_id.isprintable():
        raise InvalidRequest(f"request_id {shown(request_id)} contains non-printable characters")
    return request_id


def check_profile(profile: str) -> str:
    """Refuse a profile name far longer than any profile (before it is looked up or quoted)."""
    if len(profile) > MAX_PROFILE_CHARS:
        raise InvalidRequest(
            f"profile {shown(profile)} is longer than {MAX_PROFILE_CHARS} characters; a profile"
            " is a short name such as 'vaccination'"
        )
    return profile


def check_kid(kid: bytes) -> bytes:
    """Refuse a missing kid, or one that cannot be a kid (not 8 bytes)."""
    if not kid:
        raise InvalidRequest(
            "kid is required: call GetSigningKey and send the kid you put in the protected header"
        )
    if len(kid) != KID_BYTES:
        raise InvalidRequest(
            f"kid {shown(kid, 16)} is {len(kid)} bytes; a kid is the first {KID_BYTES} bytes of"
            " SHA-256 over the DSC: call GetSigningKey and send the kid it returns"
        )
    return kid


def encoding_for(format_value: int) -> SignatureEncoding:
    """Map the API's SignatureFormat number to an encoding; 0 (unspecified) means raw."""
    if format_value in (0, 1):
        return SignatureEncoding.RAW
    if format_value == 2:
        return SignatureEncoding.DER
    raise InvalidRequest(f"unknown signature format {format_value}; use RAW (1) or DER (2)")
