"""Trusted Document Signer Certificates for verification, and the trust-list JSON format.

Trust-list JSON (written by :func:`write_trust_list`, read by :meth:`TrustStore.load`)::

    {
      "format": "signer-trust-list",
      "version": 1,
      "entries": [
        {
          "kid_b64": "3QL0Bc1RtzI=",          // kid, standard base64 (as the EU gateway)
          "kid_hex": "dd02f405cd51b732",      // the same kid in hex, for people and grep
          "country": "VN",                    // subject C of the DSC, or null
          "profile": "vaccination",           // signer profile the key signs for
          "state": "active",                  // lifecycle state at export time
          "not_before": "2024-01-01T00:00:00Z",
          "not_after": "2026-01-01T00:00:00Z",
          "dsc_b64": "MIIB...",               // DSC DER, standard base64
          "dsc_pem": "-----BEGIN CERTIFICATE-----\\n..."
        }
      ],
      "revoked": [                            // keys withdrawn after a compromise
        {"kid_b64": "...", "kid_hex": "...", "profile": "vaccination",
         "revoked_at": "2026-03-01T08:00:00Z"}
      ]
    }

A certificate whose kid is listed under ``revoked`` never verifies, whatever else the file
holds; an exported list never has a revoked key among its entries.

Reading is lenient: a bare JSON list of entries is accepted, and so is the EU gateway /
national backend shape ``{"certificates": [{"kid": <b64>, "rawData": <b64 DER>}, ...]}`` and
the DCC Gateway trust list :func:`gateway_trust_list` writes (a list of ``{"kid", "timestamp",
"country", "certificateType": "DSC", "thumbprint", "rawData"}``). A trust list signed for
direct partners (CMS, :mod:`signer.dcc.signed_trust`) is read only with the publisher's pinned
upload certificate, and a partner who pins one gets only a list that verifies with it.
An entry needs a DSC (``dsc_b64``, ``dsc_pem`` or ``rawData``); its kid is taken from
``kid_b64``, ``kid_hex`` or ``kid`` (base64) when given (they must agree), otherwise computed
from the DSC. Entries that cannot be used are skipped and listed in :attr:`TrustStore.skipped`.
A key whose ``state`` is ``revoked`` or ``compromised`` never verifies a signature; retired and
destroyed keys still do, since the certificates they signed stay valid.
"""

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signer.dcc.dsc import DscInfo, VerifyingKey, kid_of, parse_dsc
from signer.dcc.errors import DccError, DccTrustError
from signer.dcc.limits import MAX_TRUST_FILE_BYTES
from signer.dcc.signed_trust import SignedContent, is_signed, open_signed_trust_list

FORMAT_NAME = "signer-trust-list"
FORMAT_VERSION = 1
UNTRUSTED_STATES = frozenset({"revoked", "compromised"})


@dataclass(frozen=True)
class TrustedKey:
    """One DSC that verifiers accept, under the kid certificates name it by."""

    kid: bytes
    public_key: VerifyingKey
    dsc: DscInfo
    profile: str | None = None
    state: str | None = None

    @property
    def revoked(self) -> bool:
        """Whether the trust list marks this key as no longer trustworthy."""
        return self.state in UNTRUSTED_STATES


class TrustStore:
    """A set of trusted DSCs; several may share one kid (all are tried)."""

    def __init__(self, keys: Iterable[TrustedKey] = (), revoked_kids: Iterable[bytes] = ()) -> None:
        """A store holding ``keys``; a certificate with one of ``revoked_kids`` never verifies."""
        self._keys: list[TrustedKey] = list(keys)
        self.revoked_kids: frozenset[bytes] = frozenset(revoked_kids)
        self.skipped: list[str] = []
        self.signed: SignedContent | None = None
        """Set when the store came from a signed trust list that verified."""

    @classmethod
    def from_dsc(cls, data: bytes) -> "TrustStore":
        """Trust exactly one DSC (PEM or DER bytes); its kid is computed from its DER."""
        info = parse_dsc(data)
        return cls([TrustedKey(kid=info.kid, public_key=info.public_key, dsc=info)])

    @classmethod
    def from_trust_list(cls, document: object) -> "TrustStore":
        """Trust the entries of a parsed trust-list JSON document (see the module docstring)."""
        store = cls(revoked_kids=_revoked_kids(document))
        for index, entry in enumerate(_entries(document)):
            try:
                store.add(_trusted_key(entry))
            except DccError as exc:
                store.skipped.append(f"entry {index}: {exc}")
        return store

    @classmethod
    def load(cls, path: Path, signer_certificate: bytes | None = None) -> "TrustStore":
        """Load a DSC file (PEM/DER), a trust-list JSON file or a signed trust list, recognised
        by its content. A signed list needs ``signer_certificate`` (the publisher's pinned
        upload certificate) and must verify with it; with ``signer_certificate`` an unsigned
        file is refused.

        Files over :data:`~signer.dcc.limits.MAX_TRUST_FILE_BYTES` are refused unparsed.
        """
        data = _read_capped(path)
        signed = is_signed(data)
        if signed and signer_certificate is None:
            raise DccTrustError(
                f"{path} is a signed trust list: give the publisher's upload certificate"
                " (--trust-list-signer) to check it"
            )
        if signer_certificate is not None:
            if not signed:
                raise DccTrustError(
                    f"{path} is not a signed trust list, but a signer certificate was given to"
                    " check it; ask the publisher for the signed list"
                )
            try:
                opened = open_signed_trust_list(data, signer_certificate)
            except DccTrustError as exc:
                raise DccTrustError(f"{path}: {exc}") from None
            store = cls._from_json(opened.content, path)
            store.signed = opened
            return store
        if data.lstrip()[:1] in (b"{", b"["):
            return cls._from_json(data, path)
        try:
            return cls.from_dsc(data)
        except DccTrustError as exc:
            raise DccTrustError(f"{path}: {exc}") from None

    @classmethod
    def _from_json(cls, data: bytes, path: Path) -> "TrustStore":
        if data.lstrip()[:1] in (b"{", b"["):
            try:
                document = json.loads(data)
            except RecursionError:
                raise DccTrustError(f"{path}: JSON nested too deeply for a trust list") from None
            except ValueError as exc:
                raise DccTrustError(f"{path}: not valid JSON: {exc}") from None
            return cls.from_trust_list(document)
        raise DccTrustError(f"{path}: the signed content is not a trust-list JSON document")

    def add(self, key: TrustedKey) -> None:
        """Trust one more key."""
        self._keys.append(key)

    def candidates(self, kid: bytes | None) -> list[TrustedKey]:
        """Return the keys with this kid; every key when ``kid`` is ``None``."""
        if kid is None:
            return list(self._keys)
        return [key for key in self._keys if key.kid == kid]

    @property
    def keys(self) -> Sequence[TrustedKey]:
        """All trusted keys."""
        return tuple(self._keys)

    def __len__(self) -> int:
        """Return the number of trusted keys."""
        return len(self._keys)


def trust_list_entry(dsc_der: bytes, profile: str, state: str) -> dict[str, Any]:
    """Return the trust-list entry of one DSC (the format of the module docstring)."""
    info = parse_dsc(dsc_der)
    b64 = base64.b64encode(info.der).decode("ascii")
    pem_lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    pem = "\n".join(["-----BEGIN CERTIFICATE-----", *pem_lines, "-----END CERTIFICATE-----", ""])
    return {
        "kid_b64": base64.b64encode(info.kid).decode("ascii"),
        "kid_hex": info.kid.hex(),
        "country": info.country,
        "profile": profile,
        "state": state,
        "not_before": _iso(info.not_before),
        "not_after": _iso(info.not_after),
        "dsc_b64": b64,
        "dsc_pem": pem,
    }


def revoked_entry(kid: bytes, profile: str, revoked_at: dt.datetime | None) -> dict[str, Any]:
    """Return the ``revoked`` entry of one withdrawn key."""
    return {
        "kid_b64": base64.b64encode(kid).decode("ascii"),
        "kid_hex": kid.hex(),
        "profile": profile,
        "revoked_at": _iso(revoked_at),
    }


def trust_list_document(
    entries: Iterable[Mapping[str, Any]], revoked: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Return the whole trust-list document for ``entries`` and ``revoked`` keys."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "entries": [dict(e) for e in entries],
        "revoked": [dict(r) for r in revoked],
    }


def gateway_trust_list(
    entries: Iterable[Mapping[str, Any]], timestamp: dt.datetime
) -> list[dict[str, Any]]:
    """The DSCs of project trust-list ``entries`` in the DCC Gateway's trust-list shape.

    One item per DSC: ``kid`` (base64), ``timestamp`` (RFC 3339, the export time), ``country``,
    ``certificateType`` ``DSC``, ``thumbprint`` (SHA-256 of the DER, hex) and ``rawData`` (DER,
    base64). The gateway's own ``signature`` (its trust anchor's) is not ours to make.
    """
    stamp = _iso(timestamp)
    out = []
    for entry in entries:
        der = _b64(str(entry["dsc_b64"]), "dsc_b64")
        out.append(
            {
                "kid": base64.b64encode(kid_of(der)).decode("ascii"),
                "timestamp": stamp,
                "country": entry.get("country"),
                "certificateType": "DSC",
                "thumbprint": hashlib.sha256(der).hexdigest(),
                "rawData": base64.b64encode(der).decode("ascii"),
            }
        )
    return out


def write_trust_list(
    entries: Iterable[Mapping[str, Any]], path: Path, revoked: Iterable[Mapping[str, Any]] = ()
) -> None:
    """Write a trust-list JSON file atomically (temporary file, then rename)."""
    write_json(trust_list_document(entries, revoked), path)


def write_json(document: object, path: Path) -> None:
    """Write ``document`` as indented JSON atomically (temporary file, fsync, rename)."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_TRUST_FILE_BYTES + 1)
    if len(data) > MAX_TRUST_FILE_BYTES:
        raise DccTrustError(
            f"{path}: larger than the limit of {MAX_TRUST_FILE_BYTES} bytes for a trust list "
            "or DSC file; not read"
        )
    return data


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _revoked_kids(document: object) -> list[bytes]:
    """The kids under ``revoked`` (empty for other shapes); a malformed one is an error, since
    silently trusting a key its publisher revoked is the one outcome a verifier must avoid."""
    if not isinstance(document, Mapping):
        return []
    listed = document.get("revoked", [])
    if not isinstance(listed, list):
        raise DccTrustError("trust list 'revoked' must be a list")
    kids = []
    for index, item in enumerate(listed):
        kid = _declared_kid(item) if isinstance(item, Mapping) else None
        if kid is None:
            raise DccTrustError(f"trust list revoked entry {index} names no kid")
        kids.append(kid)
    return kids


def _entries(document: object) -> list[Mapping[str, Any]]:
    if isinstance(document, Mapping):
        if "format" in document and document["format"] != FORMAT_NAME:
            raise DccTrustError(f"trust list format {document['format']!r} is not {FORMAT_NAME}")
        if "version" in document and document["version"] != FORMAT_VERSION:
            raise DccTrustError(f"trust list version {document['version']!r} is not supported")
        document = document.get("entries", document.get("certificates"))
    if not isinstance(document, list):
        raise DccTrustError("trust list must be a list of entries or an object with 'entries'")
    return [entry if isinstance(entry, Mapping) else {} for entry in document]


def _trusted_key(entry: Mapping[str, Any]) -> TrustedKey:
    info = parse_dsc(_dsc_bytes(entry))
    kid = _declared_kid(entry) or info.kid
    profile, state = entry.get("profile"), entry.get("state")
    return TrustedKey(
        kid=kid,
        public_key=info.public_key,
        dsc=info,
        profile=profile if isinstance(profile, str) else None,
        state=state if isinstance(state, str) else None,
    )


def _dsc_bytes(entry: Mapping[str, Any]) -> bytes:
    for field in ("dsc_b64", "rawData"):
        value = entry.get(field)
        if isinstance(value, str):
            return _b64(value, field)
    pem = entry.get("dsc_pem")
    if isinstance(pem, str):
        return pem.encode("ascii", errors="replace")
    raise DccTrustError("entry has no DSC (dsc_b64, dsc_pem or rawData)")


def _declared_kid(entry: Mapping[str, Any]) -> bytes | None:
    declared: list[bytes] = []
    for field in ("kid_b64", "kid"):
        if isinstance(entry.get(field), str):
            declared.append(_b64(entry[field], field))
    if isinstance(entry.get("kid_hex"), str):
        try:
            declared.append(bytes.fromhex(entry["kid_hex"]))
        except ValueError:
            raise DccTrustError("kid_hex is not hexadecimal") from None
    if len(set(declared)) > 1:
        raise DccTrustError("kid_b64, kid_hex and kid disagree")
    return declared[0] if declared else None


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DccTrustError(f"{field} is not valid base64") from None
