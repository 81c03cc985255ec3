"""SpeedData v0.6's Python client, on speeddata-relay's API.

A notebook written for SpeedData changes only its import line::

    from speeddata_client import SpeedDataClient      # SpeedData v0.6
    from speeddata_relay import SpeedDataClient       # speeddata-relay

and, where it named the server, the address: the orchestrator answers on
``http.listen`` (default ``127.0.0.1:9464``), not SpeedData's port 8080, so
the default ``base_url`` is ``http://127.0.0.1:9464/api/v1``.

The methods send SpeedData v0.5's REST calls, which the orchestrator
answers as SpeedData did (docs/api.md, "SpeedData v0.5 calls"). Errors are
SpeedData's: ``requests.HTTPError`` from ``raise_for_status()``, whose
``response`` carries the orchestrator's JSON error body; ``get_channel``
answers ``None`` and ``deregister_channel`` ``False`` for a channel that
does not exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union
from urllib.parse import quote

import requests

__all__ = ["SpeedDataClient", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "http://127.0.0.1:9464/api/v1"

Json = Dict[str, Any]


def _segment(name: str) -> str:
    return quote(name, safe="")


class SpeedDataClient:
    """SpeedData v0.6's client of the registration API.

    Usage:
        from speeddata_relay import SpeedDataClient

        client = SpeedDataClient()  # http://127.0.0.1:9464/api/v1
        client.register_channel(
            name="temperature_sensor",
            port=26100,
            schema_path="channels.d/temperature.avsc",
            config={"rotation": 3600},
        )
        for ch in client.list_channels(status="active"):
            print(f"{ch['name']}: port {ch['port']}, status {ch['status']}")
        print(client.get_channel("temperature_sensor"))
        client.deregister_channel("temperature_sensor")

    ``base_url`` is the API's root, ``/api/v1`` included. ``token`` (or
    ``token_file``) is sent as ``Authorization: Bearer`` where the
    orchestrator has ``http.token_file`` (SpeedData had no token). Every
    request goes through ``session`` (a ``requests.Session``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        token: Optional[str] = None,
        token_file: Union[str, "os.PathLike[str]", None] = None,
        timeout: float = 120.0,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = Path(token_file).read_text().strip()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"SpeedDataClient({self.base_url!r})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def list_channels(self, status: Optional[str] = None) -> List[Json]:
        """Every channel (``GET /channels``), or those of ``status``:
        ``"active"`` (a relay runs) or ``"registered"`` (none runs). Each is
        a dict with SpeedData's ``name``, ``port``, ``schema_path``,
        ``status``, ``pid``, ``created_at``, ``config``, and the
        orchestrator's own fields (``state``, ``counters``, ...)."""
        params = {"status": status} if status is not None else None
        r = self.session.get(self._url("/channels"), params=params, timeout=self.timeout)
        r.raise_for_status()
        return list(r.json()["channels"])

    def register_channel(
        self,
        name: str,
        port: int,
        schema_path: Union[str, "os.PathLike[str]", Mapping[str, Any]],
        config: Optional[Mapping[str, Any]] = None,
    ) -> Json:
        """Registers a channel and starts its relay (``POST /channels``);
        returns ``{"status", "name", "port", "pid", "message", "state"}``
        once the relay is ready (or has failed).

        ``schema_path`` names the schema file: one that exists where this
        client runs is read here and its schema sent; any other path is
        looked up by the orchestrator (absolute, else relative to the
        folder of its orchestrator.toml, else to its channels folder).
        It may also be the schema itself, as a dict. ``config``:
        ``decimation`` (with ``decimated``, the group to send to, unless
        the orchestrator's ``[defaults]`` give every channel one),
        ``rotation`` (seconds), and sections of the channel file
        (docs/api.md). Raises ``requests.HTTPError`` if refused: 400 (a bad
        field, schema not found), 409 (port or name in use)."""
        schema: Any
        if isinstance(schema_path, Mapping):
            schema = dict(schema_path)
        else:
            path = os.fspath(schema_path)
            if os.path.isfile(path):
                with open(path) as f:
                    schema = json.load(f)
            else:
                schema = path
        body: Json = {"name": name, "port": port, "schema": schema}
        if config is not None:
            body["config"] = dict(config)
        r = self.session.post(self._url("/channels"), json=body, timeout=self.timeout)
        r.raise_for_status()
        return dict(r.json())

    def get_channel(self, name: str) -> Optional[Json]:
        """One channel, as in :meth:`list_channels`; ``None`` if there is
        no such channel."""
        r = self.session.get(self._url(f"/channels/{_segment(name)}"), timeout=self.timeout)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def deregister_channel(self, name: str) -> bool:
        """Stops the channel's relay and removes its channel file (its
        archive is kept): ``True``, or ``False`` if there is no such
        channel."""
        r = self.session.delete(self._url(f"/channels/{_segment(name)}"), timeout=self.timeout)
        if r.status_code == 404:
            return False
        r.raise_for_status()
        return True

    def upload_schema(self, name: str, schema_file: Union[str, "os.PathLike[str]"]) -> Json:
        """Replaces channel ``name``'s schema with the one in
        ``schema_file`` (read here): its channel file is registered again,
        unchanged, with the new schema (``PUT /channels/{name}``), and the
        relay restarts with it. Returns the channel's status once it is
        ready (``schema_path`` is the schema file the relay reads).

        Raises ``FileNotFoundError`` or ``json.JSONDecodeError`` for the
        file, ``requests.HTTPError`` when the orchestrator refuses (404 no
        such channel; 422 a schema the channel cannot run with, or a
        channel file whose ``schema`` names another file than
        ``{name}.avsc``)."""
        with open(os.fspath(schema_file)) as f:
            schema = json.load(f)
        path = f"/channels/{_segment(name)}"
        r = self.session.get(self._url(path + "/config"), timeout=self.timeout)
        r.raise_for_status()
        channel = r.json()["channel"]
        r = self.session.put(
            self._url(path),
            params={"wait": "ready"},
            json={"channel": channel, "schema": schema},
            timeout=self.timeout,
        )
        r.raise_for_status()
        return dict(r.json())
