"""Bounds on the untrusted input :mod:`signer.dcc` decodes, and why each number.

A Digital COVID Certificate is small: its CBOR payload is a few hundred bytes to a few KiB and
the whole ``HC1:`` string must fit one QR code. A verifier reads it from a camera, a file or
stdin that nobody vouches for, so every decoding step is bounded *before* it runs: hostile
input then costs at most these limits in memory and time, and a real certificate stays far
below each of them.
"""

QR_ALPHANUMERIC_CAPACITY = 4296
"""Characters in the largest QR code (version 40, alphanumeric mode, error correction L).
No ``HC1:`` string scanned from a QR code is longer."""

MAX_HC1_CHARS = 8 * 1024
"""Longest ``HC1:`` text decoded, checked before base45 decoding: about twice the largest QR
code, leaving room for surrounding whitespace. It decodes to at most 5,461 bytes."""

MAX_COSE_BYTES = 64 * 1024
"""Largest COSE_Sign1 after inflating, and largest CBOR item decoded. 64 KiB is ten to a
hundred times a real DCC; a zlib bomb is refused once its output passes this, so inflating
never holds more than this plus its input."""

MAX_CBOR_DEPTH = 16
"""Deepest nesting of CBOR arrays, maps and tags in one decoded item. A DCC needs 5: the COSE
message 3 (CWT tag, COSE tag, array), its claims 5 (claims map, claim -260, HCERT map, ``v``
array, entry map). 16 leaves room for issuers' extra fields and keeps recursion shallow."""

MAX_CBOR_ITEMS = 4096
"""Most CBOR data items (scalars, strings, containers) in one decoded structure. A DCC has
under a hundred; the cap bounds the objects built from one input."""

MAX_TRUST_FILE_BYTES = 16 * 1024 * 1024
"""Largest trust-list JSON or DSC file read. A trust-list entry takes 1-3 KiB (DSC DER as base64,
and PEM in this project's format), so 16 MiB holds several thousand DSCs: more than every
country's DSCs in the EU gateway."""
