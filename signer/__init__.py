"""signer: an HSM-backed ES256 signing appliance for EU Digital COVID Certificates."""

__version__ = "0.1.0"
