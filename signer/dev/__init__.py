"""Development-only code: the dev token bootstrap, the dev CA and TLS files, the dev CSCA.

Nothing in this package runs in a production configuration; the daemon never imports it.
"""
