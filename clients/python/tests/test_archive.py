"""read_archive on files written here with fastavro: nested records, a
timestamp-millis time field in a union, file-name order, .part files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import fastavro
import pytest

from speeddata_relay import read_archive, time_field

SCHEMA = {
    "type": "record",
    "name": "Rig",
    "fields": [
        {"name": "seq", "type": "int"},
        {"name": "t", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "later", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {
            "name": "wheel",
            "type": {
                "type": "record",
                "name": "Wheel",
                "fields": [{"name": "speed", "type": "double"}, {"name": "temp", "type": {"type": "record", "name": "Temp", "fields": [{"name": "c", "type": "float"}]}}],
            },
        },
    ],
}
T0 = datetime(2026, 11, 23, 13, 55, tzinfo=timezone.utc)


def rec(i):
    return {"seq": i, "t": T0 + timedelta(seconds=i), "later": T0, "wheel": {"speed": i * 1.5, "temp": {"c": 20.0 + i}}}


def write(path, recs):
    with open(path, "wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(SCHEMA), recs, codec="zstandard")


def test_nested_columns_time_from_the_first_timestamp_field(tmp_path):
    assert time_field(SCHEMA) == "t"
    # Names sort by start time; written out of order on purpose.
    write(tmp_path / "rig-20261123T135510.000Z.avro", [rec(i) for i in range(10, 20)])
    write(tmp_path / "rig-20261123T135500.000Z.avro", [rec(i) for i in range(10)])
    write(tmp_path / "rig-20261123T135520.000Z.avro.part", [rec(99)])

    df = read_archive(tmp_path)
    assert df["seq"].tolist() == list(range(20))
    assert list(df.columns) == ["seq", "t", "later", "wheel.speed", "wheel.temp.c"]
    assert str(df["t"].dt.tz) == "UTC"
    assert df["wheel.temp.c"].tolist() == [20.0 + i for i in range(20)]

    part = read_archive(tmp_path, start=T0 + timedelta(seconds=5), end="2026-11-23T13:55:15Z")
    assert part["seq"].tolist() == list(range(5, 15))
    assert part["t"].iloc[0].to_pydatetime() == T0 + timedelta(seconds=5)
    assert read_archive(tmp_path, start=T0 + timedelta(hours=1)).empty
    with pytest.raises(ValueError):
        read_archive(tmp_path, start=datetime(2026, 11, 23))
