"""Shared pytest configuration: plugins every test package may use."""

pytest_plugins = ["tests.postgres", "tests.redis"]
