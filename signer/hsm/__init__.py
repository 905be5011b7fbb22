"""The PKCS#11 boundary: the only package that imports ``pkcs11``.

Nothing here knows about gRPC. The daemon never calls PKCS#11 from two threads of one process:
all HSM work runs in worker processes (:mod:`signer.hsm.pool`), each with its own
``C_Initialize``, login and session (DESIGN.md §3.1).
"""
