"""The dev CSCA: a key in the dev token that certifies signing keys, so dev needs no paperwork.

In production the national CSCA is offline: officers take the CSR to it and import the DSC it
issues. ``signer keys dev-issue-cert`` is refused outside dev configurations.
"""

from __future__ import annotations

from datetime import timedelta

from signer.config import Settings
from signer.errors import PolicyError
from signer.hsm.api import Token, digest_signer
from signer.keys.ceremony import KeyCeremonies
from signer.keys.issuance import issue_dsc_from_csr
from signer.keys.pem import certificate_der
from signer.keys.profiles import eku_for_profile


def dev_issue_certificate(
    settings: Settings,
    token: Token,
    ceremonies: KeyCeremonies,
    key_id: str,
    validity: timedelta,
) -> bytes:
    """Have the dev CSCA key in the HSM certify a key's CSR (DER); refused outside dev."""
    csca_path = settings.keys.csca_cert
    if not settings.keys.dev or csca_path is None or not csca_path.exists():
        raise PolicyError(
            "dev-issue-cert is refused: this is not a dev configuration with a dev CSCA;"
            " take the CSR to the national CSCA"
        )
    record = ceremonies.registry.key(key_id).record
    csca_key = token.key_id_by_label(settings.hsm.csca_key_label)
    now = ceremonies.registry.clock()
    return issue_dsc_from_csr(
        csca_der=certificate_der(csca_path.read_bytes()),
        csca_sign=digest_signer(token, csca_key),
        csr=ceremonies.csr(key_id),
        not_before=now - timedelta(minutes=5),
        not_after=now + validity,
        extended_key_usages=(eku_for_profile(record.profile),),
    )
