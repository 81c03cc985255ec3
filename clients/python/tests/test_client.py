"""The client against a real orchestrator (conftest.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import fastavro
import pandas as pd
import pytest

from conftest import SCHEMA, channel_toml, free_udp_port, record, send
from speeddata_relay import ApiError, Client, read_archive


def wait_for(what, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_channels_lists_the_example_ready(fleet):
    c = Client(fleet.url)
    names = {ch["name"]: ch for ch in c.channels()}
    assert names["example"]["state"] == "ready"
    assert isinstance(names["example"]["pid"], int)
    one = c.channel("example")
    assert one["name"] == "example" and one["decimation"]["algorithm"] == "downsample"


def test_add_channel_then_channel_then_remove(fleet):
    c = Client(fleet.url)
    status = c.add_channel("py-rig", channel_toml("py-rig", free_udp_port()), json.dumps(SCHEMA))
    assert status["name"] == "py-rig" and status["state"] == "ready"
    assert c.channel("py-rig")["state"] == "ready"
    c.remove_channel("py-rig")
    with pytest.raises(ApiError) as e:
        c.channel("py-rig")
    assert e.value.status == 404


def test_a_bad_channel_file_raises_with_its_problems(fleet):
    c = Client(fleet.url)
    bad = channel_toml("py-bad", free_udp_port()).replace('algorithm = "downsample"', 'algorithm = "median"')
    with pytest.raises(ApiError) as e:
        c.add_channel("py-bad", bad, SCHEMA)
    assert e.value.status in (409, 422)
    assert e.value.problems, e.value
    assert any("algorithm" in p["key"] or "median" in p["message"] for p in e.value.problems), e.value.problems
    assert "py-bad" not in {ch["name"] for ch in c.channels()}


def test_names_in_paths_are_encoded(fleet):
    with pytest.raises(ApiError) as e:
        Client(fleet.url).channel("no such/..?#")
    assert e.value.status == 404


def test_holds_add_list_remove(fleet):
    c = Client(fleet.url)
    start = datetime(2026, 11, 23, 13, 55, tzinfo=timezone.utc)
    made = c.add_hold("py-hold", start, start + timedelta(minutes=15), channels=["example"], note="odd spike")
    assert made["hold"]["name"] == "py-hold"
    assert [ch["channel"] for ch in made["channels"]] == ["example"]
    assert "py-hold" in {h["hold"]["name"] for h in c.holds()}
    # RFC 3339 strings work as well.
    c.add_hold("py-hold-2", "2026-11-23T13:55:00Z", "2026-11-23T15:10:00+01:00")
    c.remove_hold("py-hold")
    c.remove_hold("py-hold-2")
    assert not {"py-hold", "py-hold-2"} & {h["hold"]["name"] for h in c.holds()}
    with pytest.raises(ApiError) as e:
        c.remove_hold("py-hold")
    assert e.value.status == 404
    with pytest.raises(ValueError):
        c.add_hold("naive", datetime(2026, 1, 1), datetime(2026, 1, 2))


def test_an_error_body_reaches_the_exception(fleet):
    c = Client(fleet.url)
    with pytest.raises(ApiError) as e:
        c.add_hold("py-bad-time", "yesterday", "2026-11-23T14:10:00Z")
    assert e.value.status == 422
    assert e.value.field == "from"
    assert e.value.error and e.value.error in str(e.value)
    with pytest.raises(ApiError) as e:
        c.add_hold("py-unknown", "2026-11-23T13:55:00Z", "2026-11-23T14:10:00Z", channels=["nosuch"])
    assert e.value.status == 422 and e.value.field == "channels"


def test_the_token_is_sent_and_a_wrong_one_is_401(token_fleet, tmp_path):
    token = token_fleet.token
    assert token
    f = tmp_path / "token"
    f.write_text(f"  {token}\n")
    good = Client(token_fleet.url, token_file=f)
    good.add_hold("py-token", "2026-11-23T13:55:00Z", "2026-11-23T14:10:00Z")
    assert "py-token" in {h["hold"]["name"] for h in good.holds()}
    good.remove_hold("py-token")

    wrong = "not-the-" + token
    for client in (Client(token_fleet.url, token=wrong), Client(token_fleet.url)):
        with pytest.raises(ApiError) as e:
            client.add_hold("py-token-2", "2026-11-23T13:55:00Z", "2026-11-23T14:10:00Z")
        assert e.value.status == 401
        for text in (str(e.value), repr(e.value), repr(client)):
            assert token not in text and wrong not in text


def test_live_yields_records_by_the_schema_names(fleet):
    c = Client(fleet.url)
    port = fleet.ports["example"]
    stop = threading.Event()

    def sender():
        # Bounded: at most 10 s of 200 records a second.
        for i in range(2000):
            if stop.is_set():
                return
            send(port, [record(i)], pace_s=0)
            time.sleep(0.005)

    with c.live("example", max_rate=1000, timeout=10) as stream:
        t = threading.Thread(target=sender)
        t.start()
        try:
            got = [next(stream) for _ in range(5)]
        finally:
            stop.set()
            t.join()
    assert stream.closed
    names = [f["name"] for f in SCHEMA["fields"]]
    for r in got:
        assert list(r) == names
        assert r == record(r["counter"])

    with c.live("example", fields=["time", "sine_wave"], timeout=10) as stream:
        stop.clear()
        t = threading.Thread(target=sender)
        t.start()
        try:
            r = next(stream)
        finally:
            stop.set()
            t.join()
    assert list(r) == ["time", "sine_wave"]

    with pytest.raises(ApiError) as e:
        c.live("example", fields=["nosuch"])
    assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        c.live("nosuch")
    assert e.value.status == 404


def test_live_without_a_decimated_output_raises(fleet):
    c = Client(fleet.url)
    c.add_channel("py-plain", channel_toml("py-plain", free_udp_port(), decimated=False), SCHEMA)
    try:
        stream = c.live("py-plain", timeout=10)
        with pytest.raises(ApiError) as e:
            next(stream)
        assert e.value.error
        assert stream.closed
    finally:
        c.remove_channel("py-plain")


def test_read_archive_returns_what_was_sent(fleet):
    c = Client(fleet.url)
    port = free_udp_port()
    c.add_channel("py-archive", channel_toml("py-archive", port), SCHEMA)
    n = 300
    sent = [record(i) for i in range(n)]
    send(port, sent)
    wait_for(
        f"{n} archived",
        lambda: ((c.channel("py-archive").get("counters") or {}).get("archived", 0) >= n),
    )
    c.remove_channel("py-archive")  # stops it: the file is closed

    folder = fleet.archive_dir("py-archive")
    files = sorted(folder.glob("*.avro"))
    assert files
    expected = []
    for p in files:
        with open(p, "rb") as fo:
            expected.extend(fastavro.reader(fo))
    assert [r["counter"] for r in expected] == list(range(n))

    df = read_archive(folder)
    assert len(df) == n
    assert list(df.columns) == [f["name"] for f in SCHEMA["fields"]]
    assert isinstance(df["time"].dtype, pd.DatetimeTZDtype) and str(df["time"].dt.tz) == "UTC"
    assert df["counter"].tolist() == [r["counter"] for r in expected]
    assert df["message"].tolist() == [r["message"] for r in expected]
    for col in ("sine_wave", "ramp", "square_wave", "noise"):
        assert df[col].tolist() == [r[col] for r in expected]
    assert [t.to_pydatetime() for t in df["time"]] == [r["time"] for r in expected]

    # [start, end): records 100 .. 199.
    t0 = expected[0]["time"]
    part = read_archive(folder, t0 + timedelta(milliseconds=100), pd.Timestamp(t0 + timedelta(milliseconds=200)))
    assert part["counter"].tolist() == list(range(100, 200))
