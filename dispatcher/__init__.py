"""Multi-tenant edge request dispatcher."""

__version__ = "0.1.0"
