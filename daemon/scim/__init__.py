"""A reusable SCIM 2.0 client engine (RFC 7643/7644) on aiohttp and scim2-models.

Service-provider specifics (attribute mapping, matching, group policy) live in
the plugins built on it, not here.
"""

from .client import TOLERANT, ScimClient
from .discovery import Capabilities
from .errors import (
    ScimAuthError,
    ScimConflictError,
    ScimError,
    ScimInvalidResponseError,
    ScimNotFoundError,
    ScimNotLeaderError,
    ScimOutcomeUnknownError,
    ScimPermanentError,
    ScimRateLimitedError,
    ScimTransientError,
)
from .events import RateLimitWaited, RequestDone, RetryScheduled, ScimEvent, ScimObserver
from .filters import eq_filter
from .patch import diff_operations
from .ratelimit import AdaptiveRateLimiter
from .retry import RetryPolicy, parse_retry_after
from .transport import ScimResponse, ScimTransport, Timeouts, TokenProvider

__all__ = [
    "TOLERANT",
    "AdaptiveRateLimiter",
    "Capabilities",
    "RateLimitWaited",
    "RequestDone",
    "RetryPolicy",
    "RetryScheduled",
    "ScimAuthError",
    "ScimClient",
    "ScimConflictError",
    "ScimError",
    "ScimEvent",
    "ScimInvalidResponseError",
    "ScimNotFoundError",
    "ScimNotLeaderError",
    "ScimObserver",
    "ScimOutcomeUnknownError",
    "ScimPermanentError",
    "ScimRateLimitedError",
    "ScimResponse",
    "ScimTransientError",
    "ScimTransport",
    "Timeouts",
    "TokenProvider",
    "diff_operations",
    "eq_filter",
    "parse_retry_after",
]
