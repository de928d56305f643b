"""Shared pytest configuration: plugins every test package may use.

Every dispatcher a test starts runs the custom-domain verifier, and the machine's own DNS
servers are not on loopback: unless a test names its DNS server, the verifier asks a closed
loopback port (refused at once), so no test ever sends a DNS question off the machine.
"""

import os

os.environ.setdefault("DISPATCHER_DNS_RESOLVERS", "127.0.0.1:9")

pytest_plugins = ["tests.postgres", "tests.redis"]
