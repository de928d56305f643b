"""A real dispatcher in front of real tenant apps, on loopback, per registry backend.

The ``stack`` fixture is module-scoped and parametrized over SQLite and a throwaway Postgres:
two tenant servers (``alpha`` and ``beta``), a registry with workers and custom domains, and
the dispatcher (``create_app`` under uvicorn) on an unused 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dispatcher.app import Gateway, create_app
from dispatcher.settings import Settings
from tests.servers import ThreadedServer, serve_gateway
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, DomainStatus, WorkerCreate
from workers_registry.store import RegistryStore


@dataclass
class Stack:
    url: str
    gateway: Gateway
    server: ThreadedServer
    alpha: TenantApp
    beta: TenantApp
    alpha_url: str
    beta_url: str
    database_url: str

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


async def seed(database_url: str, alpha_url: str, beta_url: str) -> None:
    await upgrade(database_url)
    store = RegistryStore.from_url(database_url)
    try:
        await store.add_worker(WorkerCreate(name="alpha", upstreams=[alpha_url]))
        await store.add_worker(WorkerCreate(name="beta", upstreams=[beta_url]))
        await store.add_worker(WorkerCreate(name="off", upstreams=[alpha_url], enabled=False))
        await store.add_worker(WorkerCreate(name="based", upstreams=[f"{beta_url}/echo/base/"]))
        await store.add_worker(WorkerCreate(name="gamma", upstreams=[alpha_url]))
        await store.add_worker(
            WorkerCreate(name="keephost", upstreams=[alpha_url], preserve_host=True)
        )
        await store.add_worker(WorkerCreate(name="small", upstreams=[alpha_url], max_body_bytes=10))
        await store.add_worker(
            WorkerCreate(name="gone", upstreams=["http://127.0.0.1:9"])  # discard port: refused
        )
        for domain, worker, status in [
            ("shop.example.org", "beta", DomainStatus.ACTIVE),
            ("verified.example.org", "alpha", DomainStatus.VERIFIED),
            ("pending.example.org", "alpha", DomainStatus.PENDING),
            ("failed.example.org", "alpha", DomainStatus.FAILED),
            ("www.localhost", "beta", DomainStatus.ACTIVE),
            ("gamma.localhost", "beta", DomainStatus.ACTIVE),
        ]:
            await store.add_domain(CustomDomainCreate(domain=domain, worker=worker, status=status))
    finally:
        await store.aclose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("registry") / "registry.db"
        database_url = f"sqlite+aiosqlite:///{path}"
    else:
        server = request.getfixturevalue("postgres_server")
        database_url = server.url(server.create_database())
    alpha, beta = TenantApp("alpha"), TenantApp("beta")
    with ThreadedServer(alpha) as alpha_server, ThreadedServer(beta) as beta_server:
        asyncio.run(seed(database_url, alpha_server.url, beta_server.url))
        settings = Settings(
            database_url=database_url,
            base_domains=("localhost", "example.com"),
            registry_poll_interval=0.2,
            upstream_timeout=5,
            connect_timeout=2,
        )
        gateway = create_app(settings)
        with serve_gateway(gateway) as server:
            yield Stack(
                url=server.url,
                gateway=gateway,
                server=server,
                alpha=alpha,
                beta=beta,
                alpha_url=alpha_server.url,
                beta_url=beta_server.url,
                database_url=database_url,
            )
