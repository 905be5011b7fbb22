"""Key lifecycle, rotation policy, CSR and certificate building and checks, kid.

Pure logic: nothing here talks to the HSM, the network or the file system. Every private-key
operation goes through a :data:`~signer.keys.sign_digest.SignDigest` callable supplied by the
caller (the HSM worker in production, a software key in tests).
"""
