"""A small client of the Kubeflow Pipelines v2 REST API (``/apis/v2beta1``).

Plain ``requests`` rather than ``kfp.Client``: every call has a timeout, retries are
bounded (connection failures and 502/503/504 on idempotent calls), errors name the
request and never a credential, and what goes over the wire is exactly what the tests
assert. Request and response shapes follow KFP's ``backend/api/v2beta1`` protos in
their JSON form (snake_case fields, int64 as strings).

The bearer token travels only in the ``Authorization`` header; it is not an attribute
that ``repr`` shows and never part of an error message.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

API = "/apis/v2beta1"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
"""A bearer token for the KFP API (e.g. ``kubectl create token ...``)."""
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
"""A file with a service account token, as ``kfp.Client`` reads it inside a cluster."""
HOST_ENV = "KF_PIPELINES_ENDPOINT"
UI_HOST_ENV = "KF_PIPELINES_UI_ENDPOINT"

FINAL_RUN_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


class KfpError(Exception):
    """The KFP API failed or could not be reached (exit code 1)."""


class KfpAuthError(KfpError):
    """The KFP API refused the credentials (401/403): the user has to fix them."""


class KfpNotFound(KfpError):
    """The KFP API answered 404."""


@dataclass(frozen=True)
class Network:
    """Timeouts and retries of every request."""

    timeout_s: float = 30.0
    """Connect and read timeout of one attempt."""
    retries: int = 3
    """Further attempts after a connection failure or a 502/503/504 of an idempotent call."""
    backoff_s: float = 0.3
    """First wait between attempts; doubled each time."""


class KfpClient:
    """The KFP v2beta1 endpoints that ``s2sam submit`` and ``s2sam schedule`` use."""

    def __init__(
        self,
        host: str,
        token: str | None = None,
        *,
        ui_host: str | None = None,
        namespace: str | None = None,
        network: Network | None = None,
    ) -> None:
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--host {host!r} is not an http(s) URL, e.g. http://localhost:8080")
        self.host = host.rstrip("/")
        self.ui_host = (ui_host or self.host).rstrip("/")
        self.namespace = namespace or None
        self.network = network or Network()
        self._session = requests.Session()
        retry = Retry(
            total=self.network.retries,
            connect=self.network.retries,
            read=self.network.retries,
            status=self.network.retries,
            other=0,
            backoff_factor=self.network.backoff_s,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"GET", "DELETE"}),
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Accept"] = "application/json"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"KfpClient(host={self.host!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        """Release the connection pool."""
        self._session.close()

    # --- transport -----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """One API call; the decoded JSON answer (``{}`` when empty)."""
        url = f"{self.host}{API}{path}"
        what = f"{method} {API}{path}"
        try:
            response = self._session.request(
                method,
                url,
                params={k: v for k, v in (params or {}).items() if v not in (None, "")},
                json=body,
                files=files,
                timeout=self.network.timeout_s,
            )
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as err:
            if not _timed_out(err):
                raise KfpError(
                    f"cannot reach the KFP API at {self.host} ({_reason(err)}); check --host "
                    "and that the API is reachable from here (e.g. kubectl port-forward)"
                ) from None
            raise KfpError(
                f"the KFP API at {self.host} did not answer {what} within "
                f"{self.network.timeout_s:g} s (tried {self.network.retries + 1} times)"
            ) from None
        except requests.exceptions.RequestException as err:
            raise KfpError(f"{what} at {self.host} failed: {_reason(err)}") from None
        if response.status_code in (401, 403):
            raise KfpAuthError(
                f"the KFP API at {self.host} refused {what} with HTTP {response.status_code} "
                f"({_message(response)}); give a valid token: ${TOKEN_ENV}, --token-file, "
                "or --kube-context"
            )
        if response.status_code == 404:
            raise KfpNotFound(f"{what}: not found ({_message(response)})")
        if response.status_code >= 400:
            raise KfpError(
                f"the KFP API at {self.host} answered {what} with HTTP "
                f"{response.status_code}: {_message(response)}"
            )
        if not response.content:
            return {}
        try:
            data = response.json()
        except ValueError:
            raise KfpError(
                f"{what} at {self.host} did not answer JSON; is --host the KFP API "
                "(the pipelines UI or API server), not the Kubeflow dashboard login page?"
            ) from None
        if not isinstance(data, dict):
            raise KfpError(f"{what} answered {type(data).__name__}, expected a JSON object")
        return data

    def _pages(self, path: str, key: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        token = ""
        for _ in range(1000):  # bounded: 100 000 items
            page = self.request(
                "GET", path, params={**params, "page_size": 100, "page_token": token}
            )
            yield from page.get(key) or []
            token = page.get("next_page_token") or ""
            if not token:
                return

    # --- pipelines -----------------------------------------------------------------

    def find_pipeline(self, name: str) -> dict[str, Any] | None:
        """The pipeline whose display name is ``name``, if there is one."""
        matches = [
            p
            for p in self._pages(
                "/pipelines", "pipelines", {"filter": _equals("display_name", name)}
            )
            if p.get("display_name") == name
        ]
        if len(matches) > 1:
            ids = ", ".join(p["pipeline_id"] for p in matches)
            raise KfpError(f"several pipelines are named {name!r} ({ids}); use --pipeline-name")
        return matches[0] if matches else None

    def create_pipeline(self, name: str, description: str) -> dict[str, Any]:
        """A new pipeline without versions (they are uploaded next)."""
        return self.request(
            "POST",
            "/pipelines",
            body={"display_name": name, "description": description},
        )

    def pipeline_versions(self, pipeline_id: str) -> list[dict[str, Any]]:
        """Every version of a pipeline."""
        path = f"/pipelines/{quote(pipeline_id, safe='')}/versions"
        return list(self._pages(path, "pipeline_versions", {}))

    def upload_pipeline_version(
        self, pipeline_id: str, name: str, description: str, package: bytes, filename: str
    ) -> dict[str, Any]:
        """Upload a compiled pipeline (YAML) as a new version (multipart ``uploadfile``)."""
        return self.request(
            "POST",
            "/pipelines/upload_version",
            params={
                "pipelineid": pipeline_id,
                "name": name,
                "display_name": name,
                "description": description,
            },
            files={"uploadfile": (filename, package, "application/x-yaml")},
        )

    # --- experiments ---------------------------------------------------------------

    def find_experiment(self, name: str) -> dict[str, Any] | None:
        """The experiment named ``name`` (in the namespace, if one is set)."""
        params = {"filter": _equals("display_name", name), "namespace": self.namespace}
        for experiment in self._pages("/experiments", "experiments", params):
            if experiment.get("display_name") == name:
                return experiment
        return None

    def create_experiment(self, name: str, description: str) -> dict[str, Any]:
        """A new experiment."""
        body = {"display_name": name, "description": description}
        if self.namespace:
            body["namespace"] = self.namespace
        return self.request("POST", "/experiments", body=body)

    # --- runs ----------------------------------------------------------------------

    def create_run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start a run (``V2beta1Run`` JSON)."""
        return self.request("POST", "/runs", body=body)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run with its state and task details."""
        return self.request("GET", f"/runs/{quote(run_id, safe='')}")

    def get_artifact(self, artifact_id: str) -> dict[str, Any]:
        """An artifact with its URI (KFP's artifact API)."""
        return self.request("GET", f"/artifacts/{quote(artifact_id, safe='')}")

    # --- recurring runs ------------------------------------------------------------

    def create_recurring_run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A recurring run (``V2beta1RecurringRun`` JSON)."""
        return self.request("POST", "/recurringruns", body=body)

    def recurring_runs(self, experiment_id: str | None = None) -> list[dict[str, Any]]:
        """Every recurring run (of one experiment, or in the namespace)."""
        params = {"experiment_id": experiment_id, "namespace": self.namespace}
        return list(self._pages("/recurringruns", "recurringRuns", params))

    def enable_recurring_run(self, recurring_run_id: str) -> None:
        """Resume a paused recurring run."""
        self.request("POST", f"/recurringruns/{quote(recurring_run_id, safe='')}:enable")

    def disable_recurring_run(self, recurring_run_id: str) -> None:
        """Pause a recurring run (no new runs until it is enabled)."""
        self.request("POST", f"/recurringruns/{quote(recurring_run_id, safe='')}:disable")

    def delete_recurring_run(self, recurring_run_id: str) -> None:
        """Delete a recurring run (its past runs stay)."""
        self.request("DELETE", f"/recurringruns/{quote(recurring_run_id, safe='')}")

    # --- links ---------------------------------------------------------------------

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI."""
        return f"{self.ui_host}/#/runs/details/{run_id}"

    def recurring_run_url(self, recurring_run_id: str) -> str:
        """The recurring run's page in the KFP UI."""
        return f"{self.ui_host}/#/recurringrun/details/{recurring_run_id}"


def _equals(key: str, value: str) -> str:
    return json.dumps(
        {"predicates": [{"key": key, "operation": "EQUALS", "string_value": value}]},
        separators=(",", ":"),
    )


def _causes(err: BaseException) -> Iterator[BaseException]:
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


def _timed_out(err: BaseException) -> bool:
    """Whether a requests error is a timeout.

    After its retries urllib3 raises ``MaxRetryError``, which requests turns into a
    ``ConnectionError`` even when every attempt timed out.
    """
    for e in _causes(err):
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            continue  # refused or unroutable; urllib3 derives it from ConnectTimeoutError
        if isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError | requests.Timeout):
            return True
    return False


def _reason(err: BaseException) -> str:
    """The innermost cause of a requests error, without URLs (they may carry tokens)."""
    causes = list(_causes(err))
    if any(isinstance(e, ConnectionRefusedError) or "Connection refused" in str(e) for e in causes):
        return "connection refused"
    if any(
        "Name or service not known" in str(e)
        or "nodename nor servname" in str(e)
        or "Temporary failure in name resolution" in str(e)
        for e in causes
    ):
        return "unknown host name"
    if any(isinstance(e, ssl.SSLError) for e in causes):
        return "TLS error: is the CA bundle right? (REQUESTS_CA_BUNDLE)"
    return type(causes[-1]).__name__


def _message(response: requests.Response) -> str:
    """The error message of a KFP answer (``{"message": ...}``), shortened."""
    try:
        data = response.json()
        text = str(data.get("message") or data.get("error") or data)
    except ValueError:
        text = response.text or response.reason
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


def resolve_token(
    token_file: Path | None = None,
    kube_context: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The bearer token for the KFP API; ``None`` for an API without authentication.

    In order: ``--token-file``, ``$KF_PIPELINES_TOKEN``, ``--kube-context``,
    ``$KF_PIPELINES_SA_TOKEN_PATH``.

    Raises:
        ValueError: A token file that cannot be read, or a kube context without a token.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        return _read_token(token_file, "--token-file")
    if token := env.get(TOKEN_ENV, "").strip():
        return token
    if kube_context is not None:
        return kube_config_token(kube_context)
    if path := env.get(SA_TOKEN_PATH_ENV):
        return _read_token(Path(path), f"${SA_TOKEN_PATH_ENV}")
    return None


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ValueError(f"{what} {path}: {err.strerror}") from None
    if not token:
        raise ValueError(f"{what} {path} is empty")
    return token


def kube_config_token(context: str = "") -> str:
    """The bearer token of a kube config context ("" = the current one).

    Uses the ``kubernetes`` package, so exec plugins and OIDC refresh work as in kubectl.
    """
    try:
        from kubernetes import client, config  # type: ignore[import-untyped]
        from kubernetes.config.config_exception import (  # type: ignore[import-untyped]
            ConfigException,
        )
    except ImportError:  # pragma: no cover - kfp depends on kubernetes
        raise ValueError("--kube-context needs the 'kubernetes' package") from None
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,  # read now, not at import
            context=context or None,
            client_configuration=configuration,
        )
    except (ConfigException, OSError) as err:
        raise ValueError(f"kube config: {err}") from None
    value = str(configuration.api_key.get("authorization") or "")
    token = value.removeprefix("Bearer ").strip()
    if not token:
        raise ValueError(
            f"kube context {context or '(current)'} has no bearer token (client certificates "
            f"are not accepted by the KFP API); use ${TOKEN_ENV} or --token-file"
        )
    return token
