"""Operator tasks on an appliance host that start nothing: ``signer config check`` (a config and
every file it names) and ``signer init`` (production bootstrap on an initialised token)."""
