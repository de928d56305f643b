"""Which custom domains may be registered, and what the customer is told to publish.

Pure functions of the settings and registry data; no I/O. The admin API and the CLI both call
``check_placement`` after the body has passed the registry's model validation, so both refuse
the same names with the same words (400 ``invalid_request`` naming ``domain``).
"""

from __future__ import annotations

from collections.abc import Iterable

from dispatcher.errors import InvalidRequest
from dispatcher.hosts import MAX_HOST_LENGTH
from dispatcher.settings import Settings
from workers_registry.models import (
    CustomDomain,
    CustomDomainCreate,
    DomainRecord,
    DomainStatus,
    DomainVerification,
)

__all__ = ["check_placement", "cname_target", "domain_record", "shadowed_worker", "txt_name"]


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"field": "domain", "message": message}])


def check_placement(spec: CustomDomainCreate, settings: Settings) -> None:
    """Refuse a domain that could never route as a custom domain, or that DNS cannot prove.

    - a control host (``localhost``, a base domain's apex, a ``control_hosts`` entry): the
      control plane answers there, never a worker (IP literals are refused by the model);
    - a name whose TXT record name would be longer than DNS allows (unless vouched for);
    - a name under a base domain: the platform owns that zone, so a customer's TXT record
      there proves nothing. Accepted only with an explicit ``active`` (the operator vouches:
      exact-beats-wildcard, on purpose).
    """
    domain = spec.domain
    if domain == "localhost" or domain in settings.control_hosts:
        raise _refuse(f"'{domain}' is a control host of this dispatcher")
    if domain in settings.base_domains:
        raise _refuse(f"'{domain}' is a base domain of this dispatcher")
    base = _base_domain_above(domain, settings.base_domains)
    vouched = "status" in spec.model_fields_set and spec.status is DomainStatus.ACTIVE
    challenge = txt_name(domain, settings)
    if not vouched and len(challenge) > MAX_HOST_LENGTH:
        raise _refuse(
            f"'{domain}' is too long to carry its verification record ({challenge!r} would be "
            f"longer than {MAX_HOST_LENGTH} characters)"
        )
    if base is not None and not vouched:
        raise _refuse(
            f"'{domain}' is under the base domain '{base}', which the platform's own DNS "
            "answers: it cannot be verified. Register it with status 'active' to map it "
            "deliberately"
        )


def _base_domain_above(domain: str, base_domains: Iterable[str]) -> str | None:
    for base in base_domains:
        if domain.endswith("." + base):
            return base
    return None


def shadowed_worker(
    domain: str, base_domains: Iterable[str], worker_names: Iterable[str] | set[str]
) -> str | None:
    """The worker whose ``<name>.<base>`` is exactly ``domain`` (an exact entry wins)."""
    label, _, rest = domain.partition(".")
    names = worker_names if isinstance(worker_names, set) else set(worker_names)
    return label if rest in tuple(base_domains) and label in names else None


def txt_name(domain: str, settings: Settings) -> str:
    """Where the customer publishes the verification token."""
    return f"{settings.domain_challenge_prefix}.{domain}"


def cname_target(worker: str, settings: Settings) -> str:
    """The host the customer points their domain at."""
    if settings.cname_target is not None:
        return settings.cname_target
    return f"{worker}.{settings.base_domains[0]}" if settings.base_domains else worker


def domain_record(
    domain: CustomDomain, settings: Settings, worker_names: Iterable[str] | set[str] = ()
) -> DomainRecord:
    """``domain`` as the admin API and the CLI show it."""
    return DomainRecord(
        domain=domain.domain,
        worker=domain.worker,
        status=domain.status,
        created_at=domain.created_at,
        updated_at=domain.updated_at,
        status_changed_at=domain.status_changed_at,
        verification=DomainVerification(
            txt_name=txt_name(domain.domain, settings),
            txt_value=domain.verification_token,
            cname_target=cname_target(domain.worker, settings),
            checked_at=domain.checked_at,
            next_check_at=domain.next_check_at,
            failure_reason=domain.failure_reason,
        ),
        shadows_worker=shadowed_worker(domain.domain, settings.base_domains, worker_names),
    )
