"""The pivot export against a real orchestrator: every format read back by
a reader the project did not write (h5py, pyarrow, pandas.read_csv) and
compared value for value with fastavro reading the archive."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List

import fastavro
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
import requests

from conftest import BIN_DIR, REPO, Fleet, _start, channel_toml, free_udp_port

from speeddata_relay import ApiError, Client

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
T0_US = int(T0.timestamp()) * 1_000_000

# A schema with every Avro type, its time field nested in a record.
EVERY: Dict[str, Any] = {
    "type": "record",
    "name": "Every",
    "namespace": "test",
    "fields": [
        {"name": "pos", "type": {"type": "record", "name": "Pos", "fields": [
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "x", "type": "double"},
            {"name": "y", "type": "float"},
        ]}},
        {"name": "n", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "s", "type": "string"},
        {"name": "b", "type": "bytes"},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "e", "type": {"type": "enum", "name": "Mode", "symbols": ["IDLE", "RUN", "FAULT"]}},
        {"name": "arr", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "double"}},
        {"name": "opt", "type": ["null", "double"]},
        {"name": "optstr", "type": ["null", "string"]},
        {"name": "multi", "type": ["null", "int", "string"]},
        {"name": "recs", "type": {"type": "array", "items": {"type": "record", "name": "Kv", "fields": [
            {"name": "k", "type": "string"}, {"name": "v", "type": "int"}]}}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tod", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    ],
}
PARSED = fastavro.parse_schema(EVERY)
N = 600


def every_record(k: int) -> Dict[str, Any]:
    from decimal import Decimal
    import uuid

    return {
        "pos": {"at": T0 + timedelta(milliseconds=10 * k), "x": k / 3.0, "y": float(k % 7)},
        "n": None,
        "flag": k % 3 == 0,
        "i": -k,
        "l": k * 1_000_000_007,
        "s": f"s,\"{k}\"\n" if k % 50 == 0 else f"s{k}",
        "b": bytes([k % 256, 0, 255]),
        "fx": bytes([1, 2, 3, k % 256]),
        "e": ["IDLE", "RUN", "FAULT"][k % 3],
        "arr": list(range(k % 4)),
        "m": {f"k{j}": j / 2 for j in range(k % 3)},
        "opt": None if k % 5 == 0 else k / 10,
        "optstr": None if k % 4 == 0 else f"o{k}",
        "multi": None if k % 3 == 0 else (k if k % 3 == 1 else f"m{k}"),
        "recs": [{"k": f"r{j}", "v": j} for j in range(k % 3)],
        "day": (T0 + timedelta(days=k % 10)).date(),
        "tod": timedelta(microseconds=k * 1001).seconds * 1_000_000 + timedelta(microseconds=k * 1001).microseconds,
        "dec": Decimal(k * 7 - 1000) / 100,
        "uid": uuid.UUID(int=k),
    }


def datum(rec: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, rec)
    return buf.getvalue()


def send(port: int, datagrams: List[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            time.sleep(0.0005)


def archived(f: Fleet, channel: str) -> List[Dict[str, Any]]:
    """Every record of the channel's archive, by fastavro, in file order."""
    out: List[Dict[str, Any]] = []
    for p in sorted(f.archive_dir(channel).glob(f"{channel}-*.avro*")):
        if p.name.endswith(".idx"):
            continue
        with open(p, "rb") as fh:
            out.extend(fastavro.reader(fh))
    return out


def wait_archived(f: Fleet, channel: str, n: int) -> List[Dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        try:
            got = archived(f, channel)
        except Exception:  # a block being written
            got = []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pf() -> Iterator[Fleet]:
    """A fleet with `example` (no time field: arrival), `every` (every Avro
    type, time field pos.at) and `timed` (example's schema, time field
    time), each holding records sent once."""
    for f in _start(None):
        d = f.dir / "channels.d"
        (d / "every.avsc").write_text(json.dumps(EVERY))
        for name, schema, tf in [("every", "every.avsc", "pos.at"), ("timed", "example.avsc", "time")]:
            port = free_udp_port()
            text = channel_toml(name, port).replace(
                f'name = "{name}"\n', f'name = "{name}"\nschema = "{schema}"\n'
            ).replace('[archive]\n', f'[archive]\ntime_field = "{tf}"\n')
            (d / f"{name}.toml").write_text(text)
            f.ports[name] = port
        c = Client(f.url)
        deadline = time.monotonic() + 20
        def running(n: str) -> bool:
            try:
                return c.channel(n).get("state") == "ready"
            except ApiError:
                return False

        while not all(running(n) for n in ("every", "timed")):
            assert time.monotonic() < deadline, (f.dir / "orchestrator.log").read_text()[-3000:]
            time.sleep(0.1)
        send(f.ports["every"], [datum(every_record(k)) for k in range(N)])
        from conftest import datum as example_datum, record

        timed = []
        for k in range(N):
            r = record(k)
            r["time"] = T0_US + k * 10_000
            timed.append(example_datum(r))
        send(f.ports["timed"], timed)
        send(f.ports["example"], [example_datum(record(k)) for k in range(200)])
        assert len(wait_archived(f, "every", N)) == N
        assert len(wait_archived(f, "timed", N)) == N
        assert len(wait_archived(f, "example", 200)) == 200
        yield f


def get(f: Fleet, **params: str) -> requests.Response:
    return requests.get(f.url + "/api/v1/pivot/export", params=params, timeout=60)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_hdf5_is_speeddata_s_layout_and_value_for_value_the_archive(pf: Fleet) -> None:
    # SpeedData's notebook call, unmodified: requests.get + h5py.
    r = get(pf, start=iso(T0), duration="PT1H", channels="every,timed")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-hdf5"
    assert "attachment" in r.headers["content-disposition"]
    want = archived(pf, "every")
    with h5py.File(io.BytesIO(r.content), "r") as h:
        g = h["every"]
        assert g.attrs["rows"] == N and not g.attrs["empty"]
        assert g.attrs["time_column"] == "pos.at"
        at = g["pos.at"]
        assert at.dtype == np.int64 and at.attrs["unit"] == "ms"
        assert [int(v) for v in at[:]] == [int(w["pos"]["at"].timestamp() * 1000) for w in want]
        assert list(g["pos.x"][:]) == [w["pos"]["x"] for w in want]
        assert list(g["i"][:]) == [w["i"] for w in want]
        assert list(g["l"][:]) == [w["l"] for w in want]
        assert list(g["flag"][:]) == [w["flag"] for w in want]
        assert [s.decode() if isinstance(s, bytes) else s for s in g["s"][:]] == [w["s"] for w in want]
        assert [s.decode() if isinstance(s, bytes) else s for s in g["e"][:]] == [w["e"] for w in want]
        assert [bytes(v) for v in g["b"][:]] == [w["b"] for w in want]
        assert [list(v) for v in g["arr"][:]] == [w["arr"] for w in want]
        opt = g["opt"][:]
        valid = g["opt.valid"][:]
        for w, v, ok in zip(want, opt, valid):
            assert ok == (w["opt"] is not None)
            assert (np.isnan(v) if w["opt"] is None else v == w["opt"])
        assert [json.loads(v) for v in g["m"][:]] == [w["m"] for w in want]
        assert "n" not in g and "n" in g.attrs["omitted"]
        assert len(h["timed"]["time"]) == N
        assert h["timed"]["time"].attrs["unit"] == "us"


def test_parquet_arrow_and_csv_agree_with_fastavro(pf: Fleet) -> None:
    want = archived(pf, "every")
    r = get(pf, start=iso(T0), duration="PT1H", channels="every", format="parquet")
    assert r.status_code == 200, r.text
    t = pq.read_table(io.BytesIO(r.content))
    assert t.num_rows == N
    assert t.schema.field("pos.at").type == pa.timestamp("ms", tz="UTC")
    assert pa.types.is_dictionary(t.schema.field("e").type)
    assert t.schema.field("arr").type == pa.list_(pa.int64())
    rows = t.to_pylist()
    for w, g in zip(want, rows):
        assert g["pos.at"] == w["pos"]["at"]
        assert g["pos.x"] == w["pos"]["x"] and g["pos.y"] == w["pos"]["y"]
        for k in ("flag", "i", "l", "s", "b", "e", "arr", "opt", "optstr", "day", "dec"):
            assert g[k] == w[k], k
        assert dict(g["m"]) == w["m"]
        assert g["recs"] == w["recs"]
        assert g["uid"] == str(w["uid"])
        assert g["fx"] == w["fx"]
        assert g["tod"] == (datetime.min + timedelta(microseconds=w["tod"])).time() if isinstance(w["tod"], int) else True
        m = w["multi"]
        assert g["multi"] == (None if m is None else {"int": m if isinstance(m, int) else None, "string": m if isinstance(m, str) else None})

    r = get(pf, start=iso(T0), duration="PT1H", channels="every", format="arrow")
    assert r.status_code == 200
    a = pyarrow.ipc.open_file(io.BytesIO(r.content)).read_all()
    assert a.equals(t)

    r = get(pf, start=iso(T0), duration="PT1H", channels="every", format="csv")
    assert r.status_code == 200
    df = pd.read_csv(io.StringIO(r.text), keep_default_na=False)
    assert len(df) == N
    assert list(df["s"]) == [w["s"] for w in want]
    assert list(df["i"]) == [w["i"] for w in want]
    assert [json.loads(v) for v in df["arr"]] == [w["arr"] for w in want]
    assert [json.loads(v) for v in df["recs"]] == [w["recs"] for w in want]
    assert pd.to_datetime(df["pos.at"]).tolist() == [pd.Timestamp(w["pos"]["at"]) for w in want]


def test_range_edges_by_record_time(pf: Fleet) -> None:
    # Records of `timed` are 10 ms apart from T0: [T0+1s, T0+2s) holds 100,
    # the one at exactly T0+1s in, the one at T0+2s out.
    r = get(pf, start=iso(T0 + timedelta(seconds=1)), end=iso(T0 + timedelta(seconds=2)), channels="timed", format="parquet")
    assert r.status_code == 200, r.text
    t = pq.read_table(io.BytesIO(r.content)).to_pandas()
    assert len(t) == 100
    assert t["counter"].tolist() == list(range(100, 200))
    assert t["time"].iloc[0] == pd.Timestamp(T0 + timedelta(seconds=1))
    # signals: only those asked for, and the time field.
    r = get(pf, start=iso(T0), duration="PT0.5S", channels="timed", signals="sine_wave", format="parquet")
    t = pq.read_table(io.BytesIO(r.content))
    assert t.column_names == ["time", "sine_wave"] and t.num_rows == 50


def test_several_channels_zip_and_an_empty_channel_says_so(pf: Fleet) -> None:
    r = get(pf, start=iso(T0), duration="PT1H", channels="every,timed,example", format="parquet")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    # example's records arrived now, not in December's range.
    assert r.headers["x-export-empty-channels"] == "example"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(z.namelist()) == ["every.parquet", "example.parquet", "timed.parquet"]
    assert pq.read_table(z.open("every.parquet")).num_rows == N
    assert pq.read_table(z.open("example.parquet")).num_rows == 0


def test_arrival_time_and_last(pf: Fleet) -> None:
    r = get(pf, last="PT10M", channels="example", format="parquet")
    assert r.status_code == 200, r.text
    t = pq.read_table(io.BytesIO(r.content))
    assert t.num_rows == 200
    assert t.column_names[0] == "arrival"
    assert t.schema.field("arrival").type == pa.timestamp("us", tz="UTC")
    arrival = t.column("arrival").to_pylist()
    assert arrival == sorted(arrival)
    now = datetime.now(timezone.utc)
    assert now - timedelta(minutes=10) < arrival[0] <= now
    assert t.column("counter").to_pylist() == list(range(200))
    # By arrival, a channel with a time field too.
    r = get(pf, last="PT10M", channels="timed", format="parquet", time="arrival")
    assert pq.read_table(io.BytesIO(r.content)).num_rows == N
    r = get(pf, last="PT10M", channels="example", time="record")
    assert r.status_code == 400 and r.json()["field"] == "time"


@pytest.mark.parametrize(
    "params,status,field",
    [
        ({"channels": "timed", "start": "garbage", "duration": "PT1S"}, 400, "start"),
        ({"channels": "timed", "start": "2026-12-01T12:00:00Z", "duration": "P9999Y"}, 400, "duration"),
        ({"channels": "timed", "start": "2026-12-01T12:00:00Z", "duration": "P2D"}, 413, None),
        ({"channels": "timed", "last": "PT1S", "signals": "../x"}, 400, "signals"),
        ({"channels": "timed", "last": "PT1S", "signals": "nope"}, 400, "signals"),
        ({"channels": "nope", "last": "PT1S"}, 404, "channels"),
        ({"last": "PT1S"}, 400, "channels"),
        ({"channels": "timed", "last": "PT1S", "format": "xls"}, 400, "format"),
    ],
)
def test_hostile_queries_are_clear_4xx_and_the_fleet_is_untouched(pf: Fleet, params: Dict[str, str], status: int, field: Any) -> None:
    r = get(pf, **params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]
    if field:
        assert body.get("field") == field, body
    if status == 413:
        assert "export_max" in body["error"]
    assert requests.get(pf.url + "/readyz", timeout=5).status_code == 200


def test_ten_thousand_channels_are_over_the_limit(pf: Fleet) -> None:
    # Commas as they are (as SpeedData's notebook writes them): 49 kB.
    names = ",".join(f"c{i}" for i in range(10_000))
    r = requests.get(f"{pf.url}/api/v1/pivot/export?last=PT1S&channels={names}", timeout=30)
    assert r.status_code == 413, r.text
    assert "10000 channels" in r.json()["error"] and "http.export_max_channels" in r.json()["error"]


def test_a_huge_query_string_is_refused(pf: Fleet) -> None:
    r = requests.get(pf.url + "/api/v1/pivot/export?channels=" + "a" * (1 << 20), timeout=30)
    assert 400 <= r.status_code < 500
    assert requests.get(pf.url + "/readyz", timeout=5).status_code == 200


def test_a_client_that_disconnects_stops_the_export(pf: Fleet) -> None:
    r = requests.get(
        pf.url + "/api/v1/pivot/export",
        params={"channels": "every,timed", "start": iso(T0), "duration": "PT1H", "format": "csv"},
        stream=True,
        timeout=30,
    )
    assert r.status_code == 200
    next(r.iter_content(64))
    r.close()
    deadline = time.monotonic() + 10
    log = pf.dir / "orchestrator.log"
    while "export stopped: the client went away" not in log.read_text() and "export sent" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    assert requests.get(pf.url + "/readyz", timeout=5).status_code == 200


def test_the_command_line_through_the_api_and_offline_write_the_same(pf: Fleet, tmp_path: Path) -> None:
    orch = str(BIN_DIR / "orchestrator")
    cfg = str(pf.dir / "orchestrator.toml")
    common = ["pivot", "--config", cfg, "--channels", "every", "--start", iso(T0), "--duration", "PT1H", "--format", "parquet"]
    a, b = tmp_path / "api.parquet", tmp_path / "offline.parquet"
    p = subprocess.run([orch, *common, "--out", str(a)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([orch, *common, "--offline", "--out", str(b)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "every: 600 rows" in p.stdout
    assert pq.read_table(a).equals(pq.read_table(b))
    p = subprocess.run([orch, "pivot", "--config", cfg, "--channels", "every", "--start", "garbage", "--duration", "PT1S", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert p.returncode == 2 and "--start" in p.stderr
    assert not (tmp_path / "x").exists()


def test_client_pivot_gives_a_frame_a_channel(pf: Fleet, tmp_path: Path) -> None:
    c = Client(pf.url)
    frames = c.pivot(["every", "timed", "example"], start=T0, duration=timedelta(seconds=2))
    assert sorted(frames) == ["every", "example", "timed"]
    every, timed = frames["every"], frames["timed"]
    assert len(every) == 200 and len(timed) == 200
    assert len(frames["example"]) == 0 and "arrival" in frames["example"].columns
    # Nested fields are dotted, as pandas.json_normalize names them.
    want = pd.json_normalize([every_record(k) for k in range(200)])
    assert {"pos.at", "pos.x", "pos.y"} <= set(every.columns) and {"pos.x", "pos.y"} <= set(want.columns)
    assert every["pos.x"].tolist() == want["pos.x"].tolist()
    assert str(every["pos.at"].dtype).startswith("datetime64") and str(every["pos.at"].dt.tz) == "UTC"
    assert every["pos.at"].iloc[0] == pd.Timestamp(T0)
    one = c.pivot("timed", start=iso(T0), end=iso(T0 + timedelta(seconds=1)), signals=["counter"])
    assert list(one["timed"].columns) == ["time", "counter"] and len(one["timed"]) == 100
    last = c.pivot("example", last="PT10M")["example"]
    assert last["counter"].tolist() == list(range(200))
    with pytest.raises(ApiError) as e:
        c.pivot("timed", start="garbage", duration="PT1S")
    assert e.value.status == 400 and e.value.field == "start"
    with pytest.raises(ApiError) as e:
        c.pivot("nope", last="PT1S")
    assert e.value.status == 404
    path = c.export("timed", tmp_path / "t.h5", start=T0, duration="PT1S")
    with h5py.File(path, "r") as h:
        assert len(h["timed"]["counter"]) == 100
    with pytest.raises(ApiError):
        c.export("timed", tmp_path / "bad.h5", start="garbage", duration="PT1S")
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad.h5.part").exists()


def test_exports_need_the_token_when_one_is_set(token_fleet: Fleet) -> None:
    r = requests.get(token_fleet.url + "/api/v1/pivot/export", params={"channels": "example", "last": "PT1S"}, timeout=10)
    assert r.status_code == 401 and "token" in r.json()["error"]
    ok = Client(token_fleet.url, token=token_fleet.token).pivot("example", last="PT1S")
    assert list(ok) == ["example"]


def test_the_part_being_written_and_a_file_recovered_after_kill_9(pf: Fleet) -> None:
    folder = pf.archive_dir("timed")
    parts = list(folder.glob("timed-*.avro.part"))
    assert len(parts) == 1, sorted(p.name for p in folder.iterdir())
    # Read while being written: every record so far, up to the last block.
    r = get(pf, start=iso(T0), duration="PT1H", channels="timed", format="parquet")
    assert pq.read_table(io.BytesIO(r.content)).num_rows == N
    # A crash that tore the index: recovery rebuilds it when the relay
    # comes back (its arrival times then the file's span).
    idx = folder / (parts[0].name[: -len(".avro.part")] + ".avro.idx")
    whole = idx.stat().st_size
    assert whole > 8 + 56
    with open(idx, "r+b") as f:
        f.truncate(whole - 56 - 17)
    pid = Client(pf.url).channel("timed")["pid"]
    import os
    import signal as sig

    os.kill(pid, sig.SIGKILL)
    deadline = time.monotonic() + 20
    while not list(folder.glob("timed-*--*.avro")):
        assert time.monotonic() < deadline, (pf.dir / "orchestrator.log").read_text()[-3000:]
        time.sleep(0.1)
    deadline = time.monotonic() + 20
    while "block index rebuilt" not in (pf.dir / "orchestrator.log").read_text():
        assert time.monotonic() < deadline, (pf.dir / "orchestrator.log").read_text()[-3000:]
        time.sleep(0.1)
    assert idx.stat().st_size == whole
    r = get(pf, start=iso(T0 + timedelta(seconds=1)), end=iso(T0 + timedelta(seconds=2)), channels="timed", format="parquet")
    t = pq.read_table(io.BytesIO(r.content))
    assert t.column("counter").to_pylist() == list(range(100, 200))
    # More records, in the file the restarted relay writes: a range that
    # straddles the two files takes the end of one and the start of the
    # other.
    from conftest import datum as example_datum, record

    deadline = time.monotonic() + 20
    while not (lambda st: st["pid"] not in (None, pid) and st["state"] == "ready")(Client(pf.url).channel("timed")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    more = []
    for k in range(N, N + 100):
        rec = record(k)
        rec["time"] = T0_US + k * 10_000
        more.append(example_datum(rec))
    send(pf.ports["timed"], more)
    assert len(wait_archived(pf, "timed", N + 100)) == N + 100
    r = get(pf, start=iso(T0 + timedelta(seconds=5.9)), end=iso(T0 + timedelta(seconds=6.1)), channels="timed", format="csv")
    df = pd.read_csv(io.StringIO(r.text))
    assert df["counter"].tolist() == list(range(590, 610))
    assert len([p for p in folder.iterdir() if p.name.endswith((".avro", ".avro.part"))]) == 2


def test_a_range_across_a_schema_change_is_refused_naming_the_file(pf: Fleet) -> None:
    c = Client(pf.url)
    port = free_udp_port()
    v1 = {"type": "record", "name": "R", "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}, {"name": "a", "type": "int"}]}
    v2 = {**v1, "fields": v1["fields"] + [{"name": "b", "type": ["null", "int"], "default": None}]}
    toml = channel_toml("changing", port).replace("[archive]\n", '[archive]\ntime_field = "t"\n')
    c.add_channel("changing", toml, v1)
    p1 = fastavro.parse_schema(v1)

    def enc(schema: Any, rec: Dict[str, Any]) -> bytes:
        b = io.BytesIO()
        fastavro.schemaless_writer(b, schema, rec)
        return b.getvalue()

    send(port, [enc(p1, {"t": T0_US + k, "a": k}) for k in range(10)])
    assert len(wait_archived(pf, "changing", 10)) == 10
    c.add_channel("changing", toml, v2)
    r = get(pf, start=iso(T0), duration="PT1S", channels="changing", format="parquet")
    assert r.status_code == 409, r.text
    assert "another schema" in r.json()["error"] and "changing-" in r.json()["error"]
    c.remove_channel("changing")
