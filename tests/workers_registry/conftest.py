"""Fixtures of the registry tests: a migrated store and a started dispatcher state on it, on
both backends (``registry_url``); what a migrated Postgres registry announces (``heard``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatcher.state import DispatcherState
from tests.workers_registry.registry_kit import announced, running
from workers_registry.migrate import upgrade
from workers_registry.store import RegistryStore


@pytest.fixture
async def store(registry_url: str) -> AsyncIterator[RegistryStore]:
    await upgrade(registry_url)
    registry = RegistryStore.from_url(registry_url)
    yield registry
    await registry.aclose()


@pytest.fixture
async def gateway(store: RegistryStore) -> AsyncIterator[DispatcherState]:
    async with running(store.engine.url.render_as_string(hide_password=False)) as state:
        yield state


@pytest.fixture
async def heard(postgres_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every payload announced on the registry channel of a migrated Postgres registry."""
    await upgrade(postgres_url)
    async with announced(postgres_url) as received:
        yield received
