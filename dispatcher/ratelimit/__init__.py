"""Per-worker and per-client request-rate limits, counted in Redis or in the process.

``RateLimiter`` is the one entry point of the data plane (``limiter.py``); the GCRA arithmetic
(``gcra.py``), the client identity (``client.py``) and the counter stores (``local.py``, and
``counters.py`` for Redis, imported only with a ``rate_limit_url``) are its parts.
"""

from dispatcher.ratelimit.limiter import RateLimiter

__all__ = ["RateLimiter"]
