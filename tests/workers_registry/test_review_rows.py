"""Review of issue 12: custom-domain rows written around the store (SQLite keeps any value
in any column) on the data plane's reads.

A row ``CustomDomain`` refuses (a count that is text, a timestamp that is not one) must cost
that host alone, as an invalid worker row costs that worker: the lookup answers "not
registered" and logs it, the follower's batch read skips it and keeps following, and every
other host is still served.
"""

from __future__ import annotations

import pytest

from tests.workers_registry.registry_kit import (
    add_domain,
    add_worker,
    follower,
    route,
    running,
    sql,
)
from workers_registry.migrate import upgrade

pytestmark = pytest.mark.anyio

_HOSTILE = [
    pytest.param("failed_checks = 'x'", id="text for an integer"),
    pytest.param("created_at = 'not a date'", id="text for a timestamp"),
    pytest.param("checked_at = 12", id="a number for a timestamp"),
]


@pytest.mark.parametrize("hostile", _HOSTILE)
async def test_an_invalid_domain_row_costs_that_host_alone(tmp_path: object, hostile: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    await upgrade(url)
    async with running(url) as gateway:
        assert gateway.store is not None
        await sql(
            gateway.store,
            add_worker("shop"),
            add_domain("good.example.org", "shop"),
            add_domain("bad.example.org", "shop"),
        )
        await follower(gateway).refresh()
        assert await route(gateway, "good.example.org") == "shop"
        assert await route(gateway, "bad.example.org") == "shop"  # both cached

        # The follower re-reads both cached hosts in one batch.
        await sql(
            gateway.store,
            f"UPDATE custom_domains SET {hostile} WHERE domain = 'bad.example.org'",
            "UPDATE custom_domains SET worker = 'shop' WHERE domain = 'good.example.org'",
        )
        assert await follower(gateway).refresh()
        assert follower(gateway).applied == await gateway.store.version()

        assert await route(gateway, "good.example.org") == "shop"
        assert await route(gateway, "bad.example.org") == "domain_not_found"
        assert await gateway.store.lookup_domain("bad.example.org") is None

        # And a change after it is still followed.
        await sql(gateway.store, add_worker("blog"))
        assert await follower(gateway).refresh()
        assert "blog" in gateway.table.workers
