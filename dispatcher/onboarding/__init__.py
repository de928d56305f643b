"""Custom-domain onboarding (README, "Custom domains: onboarding").

- ``policy``: which domains may be registered, and the verification record shown for each;
- ``records``: domains as operators see them (the admin API and the CLI);
- ``dns``: the DNS questions (dnspython's asyncio resolver), hostile answers contained;
- ``schedule``: the status lifecycle and back-off, as a pure function of a check's findings;
- ``verifier``: the schedule's runner (one leader per fleet) and on-demand checks.

The registry package stores what this package decides; nothing here is on the request path.
"""

from dispatcher.onboarding.policy import check_placement, domain_record
from dispatcher.onboarding.records import domain_records
from dispatcher.onboarding.verifier import (
    CheckReport,
    DomainVerifier,
    OnboardingMetrics,
    log_operator_status,
)

__all__ = [
    "CheckReport",
    "DomainVerifier",
    "OnboardingMetrics",
    "check_placement",
    "domain_record",
    "domain_records",
    "log_operator_status",
]
