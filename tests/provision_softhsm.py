"""The provisioning hook of the p11-kit pass: initialise a SoftHSM token directly.

Run as ``python -m tests.provision_softhsm`` with ``SOFTHSM2_CONF`` and the
``SIGNER_TEST_*`` variables of :func:`tests.hsm_modules.provision`; idempotent. It plays the
vendor's tool for a module whose tokens cannot be initialised through it (p11-kit's server
exposes only an initialised token), and prints no environment: the test adds the server's
address itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from signer.hsm.provision import init_token, token_exists
from tests.hsm_modules import SOFTHSM_MODULE


def main() -> None:
    """Initialise the token named in the environment unless it exists."""
    label = os.environ["SIGNER_TEST_TOKEN_LABEL"]
    if token_exists(SOFTHSM_MODULE, label):
        return
    so_pin = Path(os.environ["SIGNER_TEST_SO_PIN_FILE"]).read_text().strip()
    user_pin = Path(os.environ["SIGNER_TEST_USER_PIN_FILE"]).read_text().strip()
    init_token(SOFTHSM_MODULE, label, so_pin, user_pin)


if __name__ == "__main__":
    main()
