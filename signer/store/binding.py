"""Which record store governs the keys of a token, remembered on the token itself.

Appliances that share keys must share their governance records: two appliances on one HSM
pointed at different stores would each follow their own officers' changes, and one could keep
signing with a key the other retired. So the first daemon to start records its store's id on
the token (a data object of its own application), and every later daemon refuses to start
when its configured store has another id. A module that cannot hold data objects (AWS
CloudHSM, Google Cloud KMS, YubiHSM 2) cannot remember the binding: the daemon says so once
and the operator keeps the configurations in step.
"""

from __future__ import annotations

import logging

from signer.errors import ConfigError, HsmError, StoreConflict
from signer.store.api import ABSENT, RecordStore
from signer.store.token import DataObjects, TokenRecordStore

log = logging.getLogger(__name__)

BINDING_APPLICATION = "signer.v1/store-binding"
_NAME = "store-id"


def check_binding(token: DataObjects, store: RecordStore) -> str | None:
    """Bind the token to ``store`` on first use; refuse (ConfigError) a different store.

    Returns the bound store id, or None where the token cannot remember it.
    """
    if isinstance(store, TokenRecordStore):
        return None  # the records live on the token itself: nothing to keep in step
    wanted = store.store_id()
    try:
        found = token.data_objects(BINDING_APPLICATION).get(_NAME)
        if found is None:
            token.put_data_object(BINDING_APPLICATION, _NAME, ABSENT, wanted.encode("ascii"))
            log.info("token bound to record store %s", wanted)
            return wanted
    except StoreConflict:
        found = token.data_objects(BINDING_APPLICATION).get(_NAME)
    except HsmError as exc:
        log.warning(
            "the PKCS#11 module cannot remember which record store governs this token (%s);"
            " keep [store] identical on every appliance that shares these keys",
            exc,
        )
        return None
    bound = found[1].decode("ascii", "replace") if found else wanted
    if bound != wanted:
        raise ConfigError(
            f"this token's keys are governed by record store {bound[:40]}, but [store] points at"
            f" store {wanted[:40]}: every appliance sharing these keys must use the same store"
            " (point [store] at it, or move the records there first)"
        )
    return bound
