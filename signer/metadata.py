"""gRPC metadata keys the daemon sets and its clients read: one definition for both sides."""

CURRENT_KID_METADATA = "signer-current-kid-bin"
"""Trailing metadata of a FAILED_PRECONDITION for a kid that may not sign: the kid to use."""

RETRY_AFTER_METADATA = "signer-retry-after-seconds"
"""Trailing metadata of a RESOURCE_EXHAUSTED quota refusal: seconds to wait before retrying."""
