"""Which remote signatures issuance checks against the DSC before it encodes a certificate.

The check guards against a faulty signer (an HSM or daemon that signs with another key, or
returns broken signatures); it is not a defence against a malicious one, which could sign
anything anyway. Checking every signature costs one ECDSA P-256 verification per certificate,
about 70 us on the development machine: 45 % of the client CPU of the whole issuance, more
than preparing the record. :class:`SignatureCheck` checks the **first signature of every kid**
(each worker process of a batch keeps its own record, so a signer that uses a wrong key, a
wrong curve or a wrong format is caught at the first certificate) and, after that, **a random
sample** of ``rate`` of the signatures (an intermittent fault that breaks a fraction of the
signatures is caught after about ``1 / rate`` bad ones). Whatever the rate, a mismatch stops
issuance before that certificate is written.
"""

from __future__ import annotations

import math
import random

DEFAULT_SAMPLE_RATE = 0.01
"""Share of signatures checked at random besides the first of each kid (README, "Issuing
certificates in bulk", gives the measured cost behind this default)."""


class SignatureCheck:
    """Picks the signatures to check: the first of each kid, then ``rate`` of the others.

    ``rate`` 1 checks every signature, 0 only the first of each kid. One instance belongs to
    one thread of one process; ``checked`` counts the signatures it picked.
    """

    def __init__(self, rate: float = DEFAULT_SAMPLE_RATE, *, seed: int | None = None) -> None:
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"signature check rate {rate!r} is not between 0 and 1")
        self.rate = rate
        self.checked = 0
        self._seen: set[bytes] = set()
        self._random = random.Random(seed).random  # noqa: S311 (a sample, not a secret)

    @classmethod
    def every(cls) -> SignatureCheck:
        """A check of every signature."""
        return cls(1.0)

    def wanted(self, kid: bytes) -> bool:
        """Whether to check the next signature made with ``kid``."""
        if kid not in self._seen:
            self._seen.add(kid)
        elif self.rate < 1.0 and self._random() >= self.rate:
            return False
        self.checked += 1
        return True
