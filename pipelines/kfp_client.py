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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from components.errors import InputError, ServiceError
from components.io.network import (
    NetworkOptions,
    causes,
    failure_reason,
    timed_out,
    with_retries,
)

API = "/apis/v2beta1"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
"""A bearer token for the KFP API (e.g. ``kubectl create token ...``)."""
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
"""A file with a service account token, as ``kfp.Client`` reads it inside a cluster."""
HOST_ENV = "KF_PIPELINES_ENDPOINT"
UI_HOST_ENV = "KF_PIPELINES_UI_ENDPOINT"

FINAL_RUN_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


class KfpError(ServiceError):
    """The KFP API failed or could not be reached (exit code 1)."""


class KfpAuthError(InputError):
    """The KFP API refused the credentials (401/403): the user has to fix them (exit 2)."""


class KfpNotFound(KfpError):
    """The KFP API answered 404."""


DEFAULT_NETWORK = NetworkOptions(backoff_s=0.3)
"""A KFP API answers fast or not at all: short waits between the bounded retries."""
RETRIED_STATUS = frozenset({502, 503, 504})
"""Answers of a gateway in front of the API that a retry of an idempotent call may pass."""
IDEMPOTENT = frozenset({"GET", "DELETE"})


class _RetryableAnswer(Exception):
    """A 502/503/504 answer to an idempotent call: retried by the network helper."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class KfpClient:
    """The KFP v2beta1 endpoints that ``s2sam submit`` and ``s2sam schedule`` use."""

    def __init__(
        self,
        host: str,
        token: str | None = None,
        *,
        ui_host: str | None = None,
        namespace: str | None = None,
        network: NetworkOptions | None = None,
    ) -> None:
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"--host {host!r} is not an http(s) URL, e.g. http://localhost:8080")
        self.host = host.rstrip("/")
        self.ui_host = (ui_host or self.host).rstrip("/")
        self.namespace = namespace or None
        self.network = network or DEFAULT_NETWORK
        self._session = requests.Session()
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
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}

        def send() -> requests.Response:
            response = self._session.request(
                method, url, params=query, json=body, files=files, timeout=self.network.timeout_s
            )
            if method in IDEMPOTENT and response.status_code in RETRIED_STATUS:
                raise _RetryableAnswer(response)
            return response

        def retry(err: BaseException) -> bool:
            if method in IDEMPOTENT:
                return isinstance(
                    err, _RetryableAnswer | requests.exceptions.Timeout | requests.ConnectionError
                )
            return _never_connected(err)  # a POST is retried only if it never left

        response = with_retries(
            send, self.network, what, transient=retry, give_up=self._failed(what)
        )
        return self._answer(response, what)

    def _answer(self, response: requests.Response, what: str) -> dict[str, Any]:
        """The JSON object of an answer, or the error its status means."""
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

    def _failed(self, what: str) -> Any:
        """How a request that still fails after the retries is reported."""

        def give_up(err: BaseException, attempts: int) -> ServiceError:
            if isinstance(err, _RetryableAnswer):
                return KfpError(
                    f"the KFP API at {self.host} answered {what} with HTTP "
                    f"{err.response.status_code}: {_message(err.response)}"
                )
            if isinstance(err, requests.exceptions.Timeout | requests.ConnectionError):
                if not timed_out(err):
                    return KfpError(
                        f"cannot reach the KFP API at {self.host} ({failure_reason(err)}); "
                        "check --host and that the API is reachable from here (e.g. kubectl "
                        "port-forward)"
                    )
                return KfpError(
                    f"the KFP API at {self.host} did not answer {what} within "
                    f"{self.network.timeout_s:g} s (tried {attempts} times)"
                )
            return KfpError(f"{what} at {self.host} failed: {failure_reason(err)}")

        return give_up

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


def _never_connected(err: BaseException) -> bool:
    """Whether a request failed before a connection was made (so nothing was sent)."""
    import urllib3

    return any(
        isinstance(
            e, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
        )
        for e in causes(err)
    )


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
        raise InputError(f"{what} {path}: {err.strerror}") from None
    if not token:
        raise InputError(f"{what} {path} is empty")
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
        raise InputError("--kube-context needs the 'kubernetes' package") from None
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,  # read now, not at import
            context=context or None,
            client_configuration=configuration,
        )
    except (ConfigException, OSError) as err:
        raise InputError(f"kube config: {err}") from None
    value = str(configuration.api_key.get("authorization") or "")
    token = value.removeprefix("Bearer ").strip()
    if not token:
        raise InputError(
            f"kube context {context or '(current)'} has no bearer token (client certificates "
            f"are not accepted by the KFP API); use ${TOKEN_ENV} or --token-file"
        )
    return token
