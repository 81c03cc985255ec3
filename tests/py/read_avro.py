#!/usr/bin/env python3
"""Reads Avro container files with fastavro, as an analyst would.

Prints one JSON object: for each file (in the order given) its path, the
schema text from its header, and every record re-encoded with fastavro's
schemaless writer (hex), so the caller can compare records byte for byte with
what was sent.

With --values first, each record is given instead as fastavro's default
reader returns it (logical types converted: datetime, date, Decimal, UUID),
as JSON: dates and times in ISO 8601, decimals and UUIDs as strings, bytes
in hex.
"""
import datetime
import decimal
import io
import json
import sys
import uuid

import fastavro


def plain(value):
    """A JSON-able stand-in for what fastavro's reader returned."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot put {type(value).__name__} into JSON")


def main(args):
    values = args[:1] == ["--values"]
    paths = args[1:] if values else args
    files = []
    for path in paths:
        with open(path, "rb") as fo:
            reader = fastavro.reader(fo)
            schema_text = reader.metadata["avro.schema"]
            parsed = fastavro.parse_schema(json.loads(schema_text))
            records = []
            for rec in reader:
                if values:
                    records.append(rec)
                    continue
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, parsed, rec)
                records.append(buf.getvalue().hex())
        files.append({"path": path, "schema": schema_text, "codec": reader.codec, "records": records})
    json.dump({"files": files}, sys.stdout, default=plain)


if __name__ == "__main__":
    main(sys.argv[1:])
