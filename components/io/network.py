"""The one network helper: timeouts, bounded retries with backoff, secrets kept out of messages.

Every request the project makes (STAC search, SAS token requests, checkpoint
downloads, the KFP API) goes through :func:`with_retries` with a
:class:`NetworkOptions`: each attempt under ``timeout_s``, a transient failure (5xx,
429, a timeout, a dropped or refused connection) retried up to ``retries`` times with
exponential backoff, and what still fails raised as :class:`ServiceError` naming the
service and the request, never a credential: :func:`redact` blanks URL query strings
(SAS tokens), passwords in URLs (``http://user:pw@host``) and any secret it is given.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from components.errors import S2samError, ServiceError

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_SIGNED_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class NetworkOptions:
    """Timeouts and retries of every request.

    A request gets ``timeout_s`` to connect and then ``timeout_s`` between bytes; a
    transient failure is retried up to ``retries`` times, waiting ``backoff_s * 2**k``
    (at most :data:`MAX_BACKOFF_S`) before retry ``k``.
    """

    timeout_s: float = field(
        default=30.0, metadata={"doc": "Per-request timeout in seconds (connect, then idle)."}
    )
    retries: int = field(default=3, metadata={"doc": "Retries of a failed request."})
    backoff_s: float = field(
        default=1.0, metadata={"doc": "First wait before a retry, doubled each time (s)."}
    )

    def __post_init__(self) -> None:
        from components.errors import InputError

        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise InputError(f"timeout must be a positive number of seconds, got {self.timeout_s}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"retries must be a non-negative integer, got {self.retries!r}")
        if not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise InputError(f"backoff must be a non-negative number, got {self.backoff_s}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return float(min(self.backoff_s * 2**attempt, MAX_BACKOFF_S))

    def gdal_options(self) -> dict[str, str]:
        """GDAL ``/vsicurl/`` settings: the same limits for COG range requests.

        GDAL retries 5xx answers and timeouts per request itself; a stall is a
        transfer slower than 1 byte/s for ``timeout_s``.
        """
        seconds = str(max(1, math.ceil(self.timeout_s)))
        return {
            "GDAL_HTTP_CONNECTTIMEOUT": seconds,
            "GDAL_HTTP_LOW_SPEED_TIME": seconds,
            "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
            "GDAL_HTTP_TIMEOUT": str(max(60, 10 * math.ceil(self.timeout_s))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": str(self.backoff_s),
        }


def with_retries(
    call: Callable[[], _T],
    network: NetworkOptions,
    what: str,
    *,
    secrets: Iterable[str | None] = (),
    transient: Callable[[BaseException], bool] | None = None,
    give_up: Callable[[BaseException, int], S2samError] | None = None,
) -> _T:
    """``call()``, retried with backoff while it fails transiently.

    ``transient`` decides what is retried (default :func:`is_transient`); ``give_up``
    turns the final failure and the number of attempts into the error raised
    (default: a :class:`ServiceError` saying what was attempted, how often and why).
    An :class:`S2samError` raised by ``call`` itself passes through unchanged.

    Raises:
        ServiceError: A permanent failure, or the last transient one (secrets redacted).
    """
    retryable = transient or is_transient
    hidden = tuple(s for s in secrets if s)
    attempts = network.retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except S2samError:
            raise
        except Exception as err:
            again = retryable(err)
            if not again or attempt == attempts - 1:
                if give_up is not None:
                    raise give_up(err, attempt + 1) from None
                reason = redact(f"{type(err).__name__}: {err}", *hidden)
                tries = f" after {attempt + 1} attempts" if again else ""
                raise ServiceError(f"{what} failed{tries}: {reason}") from None
            delay = network.delay(attempt)
            reason = redact(failure_reason(err), *hidden)
            logger.warning("%s failed (%s); retry %d in %.1fs", what, reason, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def is_transient(err: BaseException) -> bool:
    """Whether a request failure may pass on retry: 5xx, 429, timeouts, broken connections."""
    import urllib.error

    import requests

    status = http_status(err)
    if status is not None:
        return status == 429 or status >= 500
    if _is_pystac_api_error(err):
        return True  # pystac-client wraps connection errors and timeouts without a status
    return isinstance(
        err, requests.RequestException | urllib.error.URLError | ConnectionError | TimeoutError
    )


def http_status(err: BaseException) -> int | None:
    """The HTTP status an error carries (requests, pystac-client, urllib), if any."""
    import urllib.error

    import requests

    if isinstance(err, requests.HTTPError) and err.response is not None:
        return int(err.response.status_code)
    if isinstance(err, urllib.error.HTTPError):
        return int(err.code)
    if _is_pystac_api_error(err):
        status = getattr(err, "status_code", None)
        return int(status) if status is not None else None
    return None


def _is_pystac_api_error(err: BaseException) -> bool:
    try:
        from pystac_client.exceptions import APIError
    except ImportError:  # pragma: no cover - pystac-client is a dependency
        return False
    return isinstance(err, APIError)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with URL query strings (SAS tokens), URL passwords and ``secrets`` blanked."""
    text = _SIGNED_QUERY.sub(r"\1?<redacted>", text)
    text = _USERINFO.sub(r"\1<redacted>@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def causes(err: BaseException) -> Iterator[BaseException]:
    """The error, the errors in its args (urllib3 wraps its reason there) and its causes."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        stack.extend(
            getattr(current, n)
            for n in ("reason", "__cause__", "__context__")
            if isinstance(getattr(current, n, None), BaseException)
        )


def timed_out(err: BaseException) -> bool:
    """Whether a request error is a timeout.

    After its retries urllib3 raises ``MaxRetryError``, which requests turns into a
    ``ConnectionError`` even when every attempt timed out.
    """
    import requests
    import urllib3

    for e in causes(err):
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            continue  # refused or unroutable; urllib3 derives it from ConnectTimeoutError
        if isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError | requests.Timeout):
            return True
    return False


def failure_reason(err: BaseException) -> str:
    """The innermost cause of a request error in words, without URLs (they may carry tokens)."""
    found = list(causes(err))
    if any(isinstance(e, ConnectionRefusedError) or "Connection refused" in str(e) for e in found):
        return "connection refused"
    if any(
        "Name or service not known" in str(e)
        or "nodename nor servname" in str(e)
        or "Temporary failure in name resolution" in str(e)
        for e in found
    ):
        return "unknown host name"
    if any(isinstance(e, ssl.SSLError) for e in found):
        return "TLS error: is the CA bundle right? (REQUESTS_CA_BUNDLE)"
    if timed_out(err):
        return "timed out"
    return type(found[-1]).__name__
