#!/usr/bin/env python3
"""Reads Avro container files with fastavro, as an analyst would.

Prints one JSON object: for each file (in the order given) its path, the
schema text from its header, and every record re-encoded with fastavro's
schemaless writer (hex), so the caller can compare records byte for byte with
what was sent.
"""
import io
import json
import sys

import fastavro


def main(paths):
    files = []
    for path in paths:
        with open(path, "rb") as fo:
            reader = fastavro.reader(fo)
            schema_text = reader.metadata["avro.schema"]
            parsed = fastavro.parse_schema(json.loads(schema_text))
            records = []
            for rec in reader:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, parsed, rec)
                records.append(buf.getvalue().hex())
        files.append({"path": path, "schema": schema_text, "codec": reader.codec, "records": records})
    json.dump({"files": files}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
