"""SpeedData v0.5's REST calls and v0.6's Python client, unchanged, against
a real orchestrator (conftest.py): the request and answer shapes of
SpeedData's relay/API.md, on 127.0.0.1 only (multicast on interface
127.0.0.1 with TTL 0)."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator

import fastavro
import pytest
import requests

from conftest import REPO, SCHEMA, Fleet, channel_toml, free_udp_port, record, send, unique_group
from speeddata_relay import Client, SpeedDataClient
from speeddata_relay.speeddata import DEFAULT_BASE_URL


def wait_for(what, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def api(fleet: Fleet) -> str:
    return fleet.url + "/api/v1"


def outputs() -> Dict[str, Any]:
    """`config` keys that give a channel both outputs on this host only."""
    return {
        "full": {"group": f"{unique_group()}:{free_udp_port()}", "interface": "127.0.0.1", "ttl": 0},
        "decimated": {"group": f"{unique_group()}:{free_udp_port()}", "interface": "127.0.0.1", "ttl": 0},
    }


@pytest.fixture
def registered(fleet: Fleet) -> Iterator[Dict[str, Any]]:
    """A channel POSTed as SpeedData posts one, removed afterwards."""
    name, port = "sd-sensor", free_udp_port()
    config = {"decimation": 2, "rotation": 600, "archive": {"flush_interval": "100ms"}, **outputs()}
    r = requests.post(
        api(fleet) + "/channels",
        json={"name": name, "port": port, "schema": "channels.d/example.avsc", "config": config},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    try:
        yield {"name": name, "port": port, "answer": r.json(), "config": config}
    finally:
        requests.delete(f"{api(fleet)}/channels/{name}", timeout=60)


def test_health(fleet):
    r = requests.get(api(fleet) + "/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert {k: body[k] for k in ("status", "service", "version")} == {
        "status": "ok",
        "service": "speeddata-registration-api",
        "version": "0.5.0",
    }


def test_post_registers_a_channel_file_that_runs_and_archives(fleet, registered):
    name, port = registered["name"], registered["port"]
    answer = registered["answer"]
    assert answer["status"] == "success"
    assert (answer["name"], answer["port"]) == (name, port)
    assert isinstance(answer["pid"], int)
    assert answer["message"] == f"Channel '{name}' registered and relay started"

    # An ordinary file of channels.d, with SpeedData's settings translated.
    text = (fleet.dir / "channels.d" / f"{name}.toml").read_text()
    assert f'bind = "127.0.0.1:{port}"' in text
    assert re.search(r'(?m)^schema = "sd-sensor\.avsc"$', text)
    assert 'rotate_interval = "600s"' in text
    assert 'algorithm = "downsample"' in text and "factor = 2" in text
    assert 'interface = "127.0.0.1"' in text and "ttl = 0" in text
    schema = json.loads((fleet.dir / "channels.d" / f"{name}.avsc").read_text())
    assert schema == SCHEMA

    # GET /channels/{name}: SpeedData's fields beside ours.
    ch = requests.get(f"{api(fleet)}/channels/{name}", timeout=10).json()
    assert ch["name"] == name and ch["port"] == port
    assert ch["status"] == "active" and ch["state"] == "ready"
    assert ch["pid"] == answer["pid"]
    assert Path(ch["schema_path"]).resolve() == (fleet.dir / "channels.d" / f"{name}.avsc").resolve()
    assert ch["config"] == {"decimation": 2, "rotation": 600}
    assert datetime.fromisoformat(ch["created_at"].replace("Z", "+00:00")).tzinfo is not None

    # It runs: records sent to 127.0.0.1 are archived, the decimated output
    # reaches the live stream (multicast on 127.0.0.1, TTL 0).
    c = Client(fleet.url)
    stop = threading.Event()
    sent = [0]

    def sender() -> None:
        for i in range(2000):
            if stop.is_set():
                return
            send(port, [record(i)], pace_s=0)
            sent[0] += 1
            time.sleep(0.005)

    with c.live(name, max_rate=1000, timeout=10) as stream:
        t = threading.Thread(target=sender)
        t.start()
        try:
            got = [next(stream) for _ in range(3)]
        finally:
            stop.set()
            t.join()
    assert all(r == record(r["counter"]) for r in got)
    send(port, [record(10_000 + i) for i in range(100)])
    total = sent[0] + 100
    counters = wait_for(
        "every record archived",
        lambda: (lambda k: k if k.get("archived", 0) >= total else None)(c.channel(name).get("counters") or {}),
    )
    assert counters["forwarded_decimated"] > 0 and counters["rejected"] == 0

    # DELETE: 200 with SpeedData's body; the archive is kept, every record in it.
    r = requests.delete(f"{api(fleet)}/channels/{name}", timeout=60)
    assert r.status_code == 200
    assert r.json() == {
        "status": "success",
        "name": name,
        "message": f"Channel '{name}' de-registered and relay stopped",
    }
    assert not (fleet.dir / "channels.d" / f"{name}.toml").exists()
    records = []
    for p in sorted(fleet.archive_dir(name).glob("*.avro")):
        with open(p, "rb") as fo:
            records.extend(fastavro.reader(fo))
    assert len(records) == total
    # (fastavro reads `time` as a datetime: the rest as sent.)
    assert all({k: v for k, v in r.items() if k != "time"} == {k: v for k, v in record(r["counter"]).items() if k != "time"} for r in records)
    assert set(range(10_000, 10_100)) <= {r["counter"] for r in records}
    r = requests.delete(f"{api(fleet)}/channels/{name}", timeout=60)
    assert r.status_code == 404
    assert r.json()["name"] == name and r.json()["error"]


def test_post_takes_schema_paths_and_the_schema_itself(fleet):
    candidates = {
        "sd-abs": str(REPO / "channels.d" / "example.avsc"),  # absolute
        "sd-rel-conf": "channels.d/example.avsc",  # orchestrator.toml's folder
        "sd-rel-chans": "example.avsc",  # the channels folder
        "sd-inline": SCHEMA,  # the schema itself
    }
    try:
        for name, schema in candidates.items():
            port = free_udp_port()
            r = requests.post(
                api(fleet) + "/channels",
                json={"name": name, "port": port, "schema": schema, "config": {}},
                timeout=60,
            )
            assert r.status_code == 201, (name, r.text)
            assert requests.get(f"{api(fleet)}/channels/{name}/schema", timeout=10).json() == SCHEMA
            # The port as a string of digits, as SpeedData's int() took it.
        r = requests.post(
            api(fleet) + "/channels",
            json={"name": "sd-str-port", "port": str(free_udp_port()), "schema": SCHEMA},
            timeout=60,
        )
        assert r.status_code == 201, r.text
    finally:
        for name in [*candidates, "sd-str-port"]:
            requests.delete(f"{api(fleet)}/channels/{name}", timeout=60)


def test_post_refusals_have_speeddata_shapes(fleet, registered):
    url = api(fleet) + "/channels"
    post = lambda body: requests.post(url, json=body, timeout=60)  # noqa: E731
    for body in (
        {"port": 26001, "schema": "channels.d/example.avsc"},
        {"name": "sd-x", "schema": "channels.d/example.avsc"},
        {"name": "sd-x", "port": 26001},
        {"name": "sd-x", "port": 26001, "schema": ""},
    ):
        r = post(body)
        assert r.status_code == 400
        assert r.json()["error"] == "Missing required fields"
        assert r.json()["required"] == ["name", "port", "schema"]
    r = post({"name": "sd-x", "port": "twelve", "schema": "channels.d/example.avsc"})
    assert (r.status_code, r.json()["error"]) == (400, "Port must be an integer")
    r = post({"name": "sd-x", "port": free_udp_port(), "schema": "nowhere/x.avsc"})
    assert r.status_code == 400
    assert (r.json()["error"], r.json()["path"]) == ("Schema file not found", "nowhere/x.avsc")
    # A port or a name already registered.
    r = post({"name": "sd-x", "port": registered["port"], "schema": "channels.d/example.avsc"})
    assert r.status_code == 409
    assert r.json() == {**r.json(), "error": "Port already in use", "port": registered["port"], "used_by": registered["name"]}
    r = post({"name": registered["name"], "port": free_udp_port(), "schema": "channels.d/example.avsc"})
    assert r.status_code == 409
    assert (r.json()["error"], r.json()["name"]) == ("Channel name already registered", registered["name"])
    # What a channel file cannot say: 400 naming it. Nothing is written.
    r = post({"name": "sd-x", "port": free_udp_port(), "schema": SCHEMA, "config": {"decimation": 5}})
    assert (r.status_code, r.json()["field"]) == (400, "config.decimation")
    r = post({"name": "sd-x", "port": free_udp_port(), "schema": SCHEMA, "config": {"retention": 86400}})
    assert (r.status_code, r.json()["field"]) == (400, "config.retention")
    r = post({"name": "sd-x", "port": free_udp_port(), "schema": {"type": "nope"}})
    assert r.status_code == 400 and r.json()["problems"]
    r = post({"name": "Not A Name", "port": free_udp_port(), "schema": SCHEMA})
    assert (r.status_code, r.json()["field"]) == (400, "name")
    assert not (fleet.dir / "channels.d" / "sd-x.toml").exists()
    assert requests.get(f"{api(fleet)}/channels/sd-x", timeout=10).status_code == 404


def test_get_channel_404_and_schema(fleet, registered):
    r = requests.get(f"{api(fleet)}/channels/sd-nosuch", timeout=10)
    assert r.status_code == 404
    assert r.json()["name"] == "sd-nosuch" and r.json()["error"]
    r = requests.get(f"{api(fleet)}/channels/{registered['name']}/schema", timeout=10)
    assert (r.status_code, r.json()) == (200, SCHEMA)
    assert requests.get(f"{api(fleet)}/channels/sd-nosuch/schema", timeout=10).status_code == 404


def test_list_channels_and_the_status_filter(fleet, registered):
    broken = fleet.dir / "channels.d" / "sd-broken.toml"
    broken.write_text('name = "sd-broken"\nbogus = 1\n')
    try:
        wait_for(
            "the broken file listed",
            lambda: any(c["name"] == "sd-broken" for c in requests.get(api(fleet) + "/channels", timeout=10).json()["channels"]),
        )
        every = {c["name"]: c for c in requests.get(api(fleet) + "/channels", timeout=10).json()["channels"]}
        for c in every.values():
            for key in ("name", "port", "schema_path", "status", "pid", "created_at", "config", "state"):
                assert key in c, (c["name"], key)
        assert every[registered["name"]]["status"] == "active"
        assert every["sd-broken"]["status"] == "registered"
        assert every["sd-broken"]["state"] == "failed" and every["sd-broken"]["port"] is None

        active = requests.get(api(fleet) + "/channels", params={"status": "active"}, timeout=10).json()["channels"]
        assert registered["name"] in {c["name"] for c in active} and "example" in {c["name"] for c in active}
        assert all(c["status"] == "active" for c in active) and "sd-broken" not in {c["name"] for c in active}
        idle = requests.get(api(fleet) + "/channels", params={"status": "registered"}, timeout=10).json()["channels"]
        assert "sd-broken" in {c["name"] for c in idle} and all(c["status"] == "registered" for c in idle)
        assert requests.get(api(fleet) + "/channels", params={"status": "gone"}, timeout=10).status_code == 400
    finally:
        broken.unlink()
        wait_for(
            "the broken file gone",
            lambda: requests.get(f"{api(fleet)}/channels/sd-broken", timeout=10).status_code == 404,
        )


def test_validate_schema(fleet, registered):
    url = f"{api(fleet)}/channels/{registered['name']}/validate-schema"
    r = requests.post(url, json={"schema": SCHEMA}, timeout=10)
    assert (r.status_code, r.json()) == (200, {"valid": True, "message": "Schema matches registered schema"})
    other = copy.deepcopy(SCHEMA)
    other["fields"] = other["fields"][:-1]
    r = requests.post(url, json={"schema": other}, timeout=10)
    assert r.status_code == 409
    assert r.json() == {
        "valid": False,
        "message": "Schema does not match",
        "registered_schema": SCHEMA,
        "provided_schema": other,
    }
    r = requests.post(url, json={"not_schema": 1}, timeout=10)
    assert (r.status_code, r.json()["field"]) == (400, "schema")
    r = requests.post(f"{api(fleet)}/channels/sd-nosuch/validate-schema", json={"schema": SCHEMA}, timeout=10)
    assert r.status_code == 404 and r.json()["name"] == "sd-nosuch"


def test_ports_available_and_status(fleet, registered):
    port = registered["port"]
    r = requests.get(api(fleet) + "/ports/available", params={"start": port - 2, "end": port + 2}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["range"] == {"start": port - 2, "end": port + 2}
    assert port not in body["available"]
    assert body["count"] == len(body["available"])
    assert set(body["available"]) <= set(range(port - 2, port + 3))
    r = requests.get(api(fleet) + "/ports/available", timeout=10).json()
    assert r["range"] == {"start": 26000, "end": 27000}
    assert all(26000 <= p <= 27000 for p in r["available"])
    for start, end in ((27000, 26000), (26000, 26000)):
        r = requests.get(api(fleet) + "/ports/available", params={"start": start, "end": end}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]

    r = requests.get(f"{api(fleet)}/ports/{port}/status", timeout=10)
    assert (r.status_code, r.json()) == (
        200,
        {"port": port, "available": False, "status": "in_use", "channel": registered["name"]},
    )
    free = next(p for p in body["available"])
    r = requests.get(f"{api(fleet)}/ports/{free}/status", timeout=10)
    assert r.json() == {"port": free, "available": True, "status": "free"}
    assert requests.get(f"{api(fleet)}/ports/x/status", timeout=10).status_code == 400


def test_writes_follow_the_token_rules(token_fleet):
    url = token_fleet.url + "/api/v1"
    body = {"name": "sd-tok", "port": free_udp_port(), "schema": SCHEMA}
    assert requests.post(url + "/channels", json=body, timeout=60).status_code == 401
    assert requests.delete(url + "/channels/example", timeout=60).status_code == 401
    assert requests.post(url + "/channels/example/validate-schema", json={"schema": SCHEMA}, timeout=10).status_code == 401
    client = SpeedDataClient(base_url=url, token=token_fleet.token)
    try:
        assert client.register_channel("sd-tok", body["port"], SCHEMA)["status"] == "success"
    finally:
        assert client.deregister_channel("sd-tok")


def test_the_speeddata_client(fleet, tmp_path):
    assert DEFAULT_BASE_URL == "http://127.0.0.1:9464/api/v1"
    default = SpeedDataClient()
    assert default.base_url == DEFAULT_BASE_URL
    assert isinstance(default.session, requests.Session)
    assert "Usage:" in (SpeedDataClient.__doc__ or "")

    client = SpeedDataClient(base_url=api(fleet))
    assert client.base_url == api(fleet)
    port = free_udp_port()
    config = {"decimation": 3, **outputs()}
    try:
        # A path the orchestrator resolves (relative to its orchestrator.toml).
        answer = client.register_channel("sd-client", port, "channels.d/example.avsc", config)
        assert answer["status"] == "success" and answer["port"] == port and answer["pid"]
        ch = client.get_channel("sd-client")
        assert ch is not None
        assert (ch["port"], ch["status"], ch["config"]["decimation"]) == (port, "active", 3)
        assert "sd-client" in {c["name"] for c in client.list_channels()}
        assert "sd-client" in {c["name"] for c in client.list_channels(status="active")}
        assert "sd-client" not in {c["name"] for c in client.list_channels(status="registered")}
        assert client.get_channel("sd-nosuch") is None

        # Refusals are requests.HTTPError, with the orchestrator's body.
        with pytest.raises(requests.HTTPError) as e:
            client.register_channel("sd-client-2", port, "channels.d/example.avsc")
        assert e.value.response.status_code == 409
        assert e.value.response.json()["used_by"] == "sd-client"

        # A file on this side is read here and its schema sent.
        local = tmp_path / "mine.avsc"
        local.write_text(json.dumps(SCHEMA))
        client.register_channel("sd-client-local", free_udp_port(), str(local))
        assert requests.get(f"{api(fleet)}/channels/sd-client-local/schema", timeout=10).json() == SCHEMA
        assert client.deregister_channel("sd-client-local") is True

        # upload_schema: the channel runs again with the new schema.
        newer = copy.deepcopy(SCHEMA)
        newer["doc"] = "uploaded by upload_schema"
        upload = tmp_path / "newer.avsc"
        upload.write_text(json.dumps(newer))
        status = client.upload_schema("sd-client", upload)
        assert status["name"] == "sd-client" and status["state"] == "ready"
        assert requests.get(f"{api(fleet)}/channels/sd-client/schema", timeout=10).json() == newer
        assert client.get_channel("sd-client")["port"] == port  # the channel file unchanged
        with pytest.raises(FileNotFoundError):
            client.upload_schema("sd-client", tmp_path / "missing.avsc")
        (tmp_path / "bad.avsc").write_text("{not json")
        with pytest.raises(json.JSONDecodeError):
            client.upload_schema("sd-client", tmp_path / "bad.avsc")
        with pytest.raises(requests.HTTPError) as e:
            client.upload_schema("sd-nosuch", upload)
        assert e.value.response.status_code == 404
    finally:
        assert client.deregister_channel("sd-client") is True
    assert client.deregister_channel("sd-client") is False
    assert client.get_channel("sd-client") is None


def test_remove_channel_returns_the_speeddata_body(fleet):
    c = Client(fleet.url)
    c.add_channel("sd-rm", channel_toml("sd-rm", free_udp_port()), SCHEMA)
    assert c.remove_channel("sd-rm") == {
        "status": "success",
        "name": "sd-rm",
        "message": "Channel 'sd-rm' de-registered and relay stopped",
    }
