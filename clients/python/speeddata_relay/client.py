"""The orchestrator's HTTP API: channels, holds and the live stream."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote, urlencode

import requests
import websocket

__all__ = ["ApiError", "Client", "LiveStream"]

if TYPE_CHECKING:
    import pandas as pd

Json = Dict[str, Any]
Time = Union[datetime, str]
Duration = Union[timedelta, str]


class ApiError(Exception):
    """Any failed request: an answer other than 2xx, or no answer at all.

    ``status`` is the HTTP status (``None`` when the orchestrator could not
    be reached); ``error``, ``field`` and ``problems`` come from the API's
    error body ``{"error", "field"?, "problems"?}``; ``body`` is that whole
    body as parsed (a dict, or ``None`` when the answer was not JSON).
    """

    def __init__(
        self,
        status: Optional[int],
        error: str,
        field: Optional[str] = None,
        problems: Optional[List[Json]] = None,
        body: Optional[Json] = None,
    ) -> None:
        self.status = status
        self.error = error
        self.field = field
        self.problems = problems or []
        self.body = body
        text = error if status is None else f"{status}: {error}"
        if field:
            text += f" (field {field!r})"
        for p in self.problems:
            text += f"\n  {p.get('file', '')}: {p.get('key', '')}: {p.get('message', '')}"
        super().__init__(text)

    @classmethod
    def _from_answer(cls, status: int, text: str) -> "ApiError":
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return cls(status, body["error"], body.get("field"), body.get("problems"), body)
        return cls(status, text.strip() or f"HTTP {status}", body=None)


def _segment(name: str) -> str:
    return quote(name, safe="")


def _rfc3339(t: Time, what: str) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, datetime):
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"{what}: a datetime with a time zone is needed (naive datetimes are ambiguous)")
        return t.isoformat()
    raise TypeError(f"{what}: a datetime or an RFC 3339 string, not {type(t).__name__}")


def _iso_duration(d: Duration, what: str) -> str:
    if isinstance(d, str):
        return d
    if isinstance(d, timedelta):
        us = d.days * 86_400_000_000 + d.seconds * 1_000_000 + d.microseconds
        if us <= 0:
            raise ValueError(f"{what}: must be longer than zero")
        secs, frac = divmod(us, 1_000_000)
        return f"PT{secs}S" if frac == 0 else f"PT{secs}.{frac:06d}".rstrip("0") + "S"
    raise TypeError(f"{what}: a timedelta or an ISO 8601 duration (\"PT30S\"), not {type(d).__name__}")


class Client:
    """A client of one orchestrator.

    ``token`` (or ``token_file``, read and stripped) is sent as
    ``Authorization: Bearer``; write requests need it where the orchestrator
    has ``http.token_file``. The token is never shown (not in ``repr``, not
    in an exception).

    Answers are the API's JSON bodies as plain dicts, field names as the
    API names them (docs/api.md).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:9464",
        token: Optional[str] = None,
        token_file: Union[str, Path, None] = None,
        timeout: float = 30.0,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = Path(token_file).read_text().strip()
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"Client({self.url!r}{', token=...' if self._token else ''})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _request(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        try:
            r = self._session.request(
                method,
                self.url + path,
                json=body,
                headers=self._headers(),
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as e:
            # The exception's own text names the URL, never the headers.
            raise ApiError(None, f"{method} {self.url}{path}: {type(e).__name__}: {e}") from None
        if not 200 <= r.status_code < 300:
            raise ApiError._from_answer(r.status_code, r.text)
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            return r.text

    # Channels

    def channels(self) -> List[Json]:
        """Every channel's status (``GET /api/v1/channels``): dicts with
        ``name``, ``file``, ``state``, ``pid``, ``uptime_s``, ``restarts``,
        ``last_exit``, ``reason``, ``counters``, ``rates``,
        ``archive_files``, ``decimation``, ..."""
        return list(self._request("GET", "/api/v1/channels")["channels"])

    def channel(self, name: str) -> Json:
        """One channel's status, as in :meth:`channels`."""
        return dict(self._request("GET", f"/api/v1/channels/{_segment(name)}"))

    def add_channel(self, name: str, channel_toml: str, schema: Union[Mapping[str, Any], str]) -> Json:
        """Registers (or replaces) channel ``name``: ``channel_toml`` is the
        channel file's text, ``schema`` the Avro schema (a dict, or its JSON
        text). Waits until the channel is ready or has failed, and returns
        its status. A refused file raises :class:`ApiError` with ``problems``."""
        if isinstance(schema, str):
            schema = json.loads(schema)
        # The channel may take up to the supervisor's start_timeout.
        return dict(
            self._request(
                "PUT",
                f"/api/v1/channels/{_segment(name)}?wait=ready",
                {"channel": channel_toml, "schema": schema},
                timeout=max(self.timeout, 120.0),
            )
        )

    def remove_channel(self, name: str) -> Json:
        """Stops channel ``name`` and removes its file (its archive is kept).
        Returns ``{"status": "success", "name", "message"}``."""
        return dict(self._request("DELETE", f"/api/v1/channels/{_segment(name)}", timeout=max(self.timeout, 120.0)))

    # Holds

    def holds(self) -> List[Json]:
        """Every hold: dicts ``{"hold": {...}, "channels": [...], "bytes"}``."""
        return list(self._request("GET", "/api/v1/holds")["holds"])

    def add_hold(
        self,
        name: str,
        start: Time,
        end: Time,
        channels: Optional[Sequence[str]] = None,
        note: Optional[str] = None,
    ) -> Json:
        """Keeps the archive files of [start, end) past retention; ``start``
        and ``end`` are aware datetimes or RFC 3339 strings. Returns the
        hold with the files it covers."""
        body: Json = {"name": name, "from": _rfc3339(start, "start"), "to": _rfc3339(end, "end")}
        if channels is not None:
            body["channels"] = list(channels)
        if note is not None:
            body["note"] = note
        return dict(self._request("POST", "/api/v1/holds", body))

    def remove_hold(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/holds/{_segment(name)}")

    # Exports

    def _export_query(
        self,
        channels: Union[str, Sequence[str]],
        start: Optional[Time],
        end: Optional[Time],
        duration: Optional[Duration],
        last: Optional[Duration],
        signals: Optional[Sequence[str]],
        time: Optional[str],
        format: str,
    ) -> Dict[str, str]:
        q: Dict[str, str] = {
            "channels": channels if isinstance(channels, str) else ",".join(channels),
            "format": format,
        }
        if start is not None:
            q["start"] = _rfc3339(start, "start")
        if end is not None:
            q["end"] = _rfc3339(end, "end")
        if duration is not None:
            q["duration"] = _iso_duration(duration, "duration")
        if last is not None:
            q["last"] = _iso_duration(last, "last")
        if signals is not None:
            q["signals"] = ",".join(signals)
        if time is not None:
            q["time"] = time
        return q

    def _export(self, query: Dict[str, str], out: IO[bytes]) -> Dict[str, str]:
        url = self.url + "/api/v1/pivot/export"
        try:
            with self._session.get(url, params=query, headers=self._headers(), stream=True, timeout=(10, 300)) as r:
                if r.status_code != 200:
                    raise ApiError._from_answer(r.status_code, r.text)
                for chunk in r.iter_content(1 << 20):
                    out.write(chunk)
                return dict(r.headers)
        except requests.RequestException as e:
            raise ApiError(None, f"GET {url}: {type(e).__name__}: {e}") from None

    def pivot(
        self,
        channels: Union[str, Sequence[str]],
        start: Optional[Time] = None,
        end: Optional[Time] = None,
        duration: Optional[Duration] = None,
        last: Optional[Duration] = None,
        signals: Optional[Sequence[str]] = None,
        time: Optional[str] = None,
    ) -> Dict[str, "pd.DataFrame"]:
        """Channels over a time range, as one pandas DataFrame each.

        The range: ``start`` (a datetime with a zone, or RFC 3339) and
        ``end`` or ``duration``; or ``last`` (ending now). Durations are
        ``timedelta`` or ISO 8601 (``"PT30S"``). The range is
        ``[start, end)``. ``signals``: the fields wanted (dotted through
        nested records, ``"pos.x"``), the time field always among them.
        ``time``: ``"record"`` (each record's own time, the default where the
        channel has ``archive.time_field``) or ``"arrival"``.

        Nested records are dotted columns (``pos.x``), as
        ``pandas.json_normalize`` names them; times are pandas datetimes in
        UTC; enums are categoricals; nulls are ``None``/``NaN``. A channel
        without data in the range has an empty frame with its columns.
        Read through Parquet and pyarrow.
        """
        import pyarrow.parquet as pq

        q = self._export_query(channels, start, end, duration, last, signals, time, "parquet")
        buf = io.BytesIO()
        self._export(q, buf)
        buf.seek(0)
        names = q["channels"].split(",")
        if len(names) == 1:
            return {names[0]: pq.read_table(buf).to_pandas()}
        out: Dict[str, pd.DataFrame] = {}
        with zipfile.ZipFile(buf) as z:
            for name in names:
                with z.open(f"{name}.parquet") as f:
                    out[name] = pq.read_table(io.BytesIO(f.read())).to_pandas()
        return out

    def export(
        self,
        channels: Union[str, Sequence[str]],
        path: Union[str, Path],
        format: str = "hdf5",
        start: Optional[Time] = None,
        end: Optional[Time] = None,
        duration: Optional[Duration] = None,
        last: Optional[Duration] = None,
        signals: Optional[Sequence[str]] = None,
        time: Optional[str] = None,
    ) -> Path:
        """The same export as :meth:`pivot`, written to ``path`` as it comes:
        ``format`` is ``hdf5`` (SpeedData's layout), ``parquet``, ``arrow``
        or ``csv`` (several channels in the last three: a zip). Returns the
        path; nothing is left there if the export fails."""
        q = self._export_query(channels, start, end, duration, last, signals, time, format)
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                self._export(q, f)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    # Live stream

    def live(
        self,
        channel: str,
        fields: Optional[Sequence[str]] = None,
        max_rate: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> "LiveStream":
        """The channel's decimated records, as they come, one dict each.

        ``fields``: dotted names of the fields wanted (the rest left out);
        ``max_rate``: records a second at most (the server's default is 100).
        ``timeout``: seconds to wait for each message before
        :class:`TimeoutError` (``None``: for ever). Close the stream (or
        use it in ``with``) to leave.
        """
        query: Dict[str, str] = {}
        if fields is not None:
            query["fields"] = ",".join(fields)
        if max_rate is not None:
            query["max_rate"] = str(max_rate)
        ws_url = "ws" + self.url[len("http"):] if self.url.startswith("http") else self.url
        url = f"{ws_url}/api/v1/channels/{_segment(channel)}/live"
        if query:
            url += "?" + urlencode(query)
        headers = [f"{k}: {v}" for k, v in self._headers().items()]
        try:
            ws = websocket.create_connection(url, header=headers, timeout=timeout or self.timeout)
        except websocket.WebSocketBadStatusException as e:
            body = getattr(e, "resp_body", None) or b""
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            raise ApiError._from_answer(e.status_code, body) from None
        except (OSError, websocket.WebSocketException) as e:
            raise ApiError(None, f"live {channel!r}: {type(e).__name__}: {e}") from None
        ws.settimeout(timeout)
        return LiveStream(ws)


class LiveStream:
    """An iterator over a channel's live records (dicts).

    ``dropped`` counts the records the server dropped because this client
    read too slowly (its ``{"dropped": n}`` messages). A message
    ``{"error": ...}`` from the server raises :class:`ApiError`.
    """

    def __init__(self, ws: "websocket.WebSocket") -> None:
        self._ws = ws
        self._pending: List[Json] = []
        self.dropped = 0
        self.closed = False

    def __iter__(self) -> Iterator[Json]:
        return self

    def __next__(self) -> Json:
        while not self._pending:
            if self.closed:
                raise StopIteration
            try:
                text = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                raise TimeoutError("no live record within the timeout") from None
            except websocket.WebSocketConnectionClosedException:
                self.close()
                raise StopIteration from None
            if not text:
                # A close frame.
                self.close()
                raise StopIteration
            msg = json.loads(text)
            if isinstance(msg, list):
                self._pending.extend(msg)
            elif isinstance(msg, dict) and set(msg) == {"error"}:
                self.close()
                raise ApiError(None, str(msg["error"]), body=msg)
            elif isinstance(msg, dict) and set(msg) == {"dropped"} and isinstance(msg["dropped"], int):
                self.dropped += msg["dropped"]
            else:
                self._pending.append(msg)
        return self._pending.pop(0)

    def close(self) -> None:
        """Leaves the stream (a clean WebSocket close)."""
        if not self.closed:
            self.closed = True
            try:
                self._ws.close()
            except Exception:
                pass

    def __enter__(self) -> "LiveStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
