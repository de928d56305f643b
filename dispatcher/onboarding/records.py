"""Custom domains as operators see them: ``DomainRecord`` with the shadowing mark filled in."""

from __future__ import annotations

from dispatcher.onboarding.policy import domain_record
from dispatcher.settings import Settings
from workers_registry.models import CustomDomain, DomainRecord
from workers_registry.store import RegistryStore

__all__ = ["domain_records"]


async def domain_records(
    store: RegistryStore, settings: Settings, domains: list[CustomDomain]
) -> list[DomainRecord]:
    """``domains`` as records. Only a name directly under a base domain can shadow a worker
    (its exact entry beats the wildcard), so only those names' workers are looked up."""
    candidates = {
        label
        for label, _, rest in (d.domain.partition(".") for d in domains)
        if rest in settings.base_domains
    }
    names = {name for name in candidates if await store.get_worker(name) is not None}
    return [domain_record(d, settings, names) for d in domains]
