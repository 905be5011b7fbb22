"""Where key lifecycle records, pending changes and CSRs are kept.

Every backend implements :class:`signer.store.api.RecordStore`; the daemon picks one by
configuration. Records are self-describing CBOR written by :mod:`signer.keys`.
"""
