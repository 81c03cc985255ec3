#!/usr/bin/env python3
"""Checks a relay's decimated output against values computed here, in plain
Python, from the datagrams that were sent.

Reads one JSON object on stdin:
  schema     the channel's schema (JSON text)
  algorithm  "downsample" | "average" | "minmax" | "rms"
  factor     N for windows of N records, or null for time windows
  keep_last  dotted field names that take the window's last value
  seq        for time windows: a keep_last field holding a sequence number,
             which tells where each window ended
  header     hex bytes before every datum (single-object encoding), or ""
  inputs     the datagrams sent, hex, in order
  outputs    the datagrams received on the decimated group, hex, in order

Decodes everything with fastavro, groups the inputs into the relay's
windows, folds each window independently (math.fsum, fractions for exact
integer means) and compares: doubles to 1e-12 relative, everything else
exactly. Prints {"windows": W, "values": V} (V values compared), or a
message naming the first difference and exits 1.
"""
import io
import json
import math
import sys
from fractions import Fraction

import fastavro

NUMERIC = {"int", "long", "float", "double"}


def half_away(q):
    """A Fraction rounded to the nearest integer, halves away from zero."""
    n = math.floor(abs(q) + Fraction(1, 2))
    return n if q >= 0 else -n


class Folder:
    def __init__(self, schema, algorithm, keep_last):
        self.names = {}
        self.collect(schema, None)
        self.algorithm = algorithm
        self.keep = set(keep_last)

    def collect(self, s, ns):
        """Named types by full name, so references resolve."""
        if isinstance(s, list):
            for b in s:
                self.collect(b, ns)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "enum", "fixed"):
                name = s["name"]
                ns = s.get("namespace", ns) if "." not in name else name.rsplit(".", 1)[0]
                full = name if "." in name else (f"{ns}.{name}" if ns else name)
                self.names[full] = (s, ns)
                self.names.setdefault(name, (s, ns))
                for f in s.get("fields", []):
                    self.collect(f["type"], ns)
            elif t == "array":
                self.collect(s["items"], ns)
            elif t == "map":
                self.collect(s["values"], ns)
            elif isinstance(t, (dict, list)):
                self.collect(t, ns)

    def resolve(self, s, ns):
        if isinstance(s, str) and s not in NUMERIC and s not in (
            "null", "boolean", "bytes", "string"
        ):
            full = s if "." in s else (f"{ns}.{s}" if ns else s)
            return self.names.get(full) or self.names[s]
        if isinstance(s, dict) and isinstance(s.get("type"), (dict, list)):
            return self.resolve(s["type"], ns)
        return s, ns

    def numeric(self, s):
        """The numeric type of a plain number schema, else None."""
        if isinstance(s, str) and s in NUMERIC:
            return s
        if isinstance(s, dict) and s.get("type") in NUMERIC and "logicalType" not in s:
            return s["type"]
        return None

    def fold_numbers(self, kind, xs, which):
        if kind in ("int", "long"):
            if which == "min":
                return min(xs)
            if which == "max":
                return max(xs)
            if which == "mean":
                return half_away(Fraction(sum(xs), len(xs)))
            return half_away(Fraction(math.sqrt(sum(x * x for x in xs) / len(xs))))
        if which == "min":
            return min(xs)
        if which == "max":
            return max(xs)
        if which == "mean":
            return math.fsum(xs) / len(xs)
        return math.sqrt(math.fsum(x * x for x in xs) / len(xs))

    def fold(self, s, ns, values, which, path):
        """The expected value of a field given its values over the window."""
        if path in self.keep:
            return values[-1]
        s, ns = self.resolve(s, ns)
        kind = self.numeric(s)
        if kind:
            return self.fold_numbers(kind, values, which)
        if isinstance(s, list):
            others = [b for b in s if b != "null"]
            if len(s) == 2 and len(others) == 1 and self.numeric(others[0]):
                xs = [v for v in values if v is not None]
                return self.fold_numbers(self.numeric(others[0]), xs, which) if xs else None
            return values[-1]
        if isinstance(s, dict) and s.get("type") == "record":
            return {
                f["name"]: self.fold(
                    f["type"],
                    ns,
                    [v[f["name"]] for v in values],
                    which,
                    f"{path}.{f['name']}" if path else f["name"],
                )
                for f in s["fields"]
            }
        if isinstance(s, dict) and s.get("type") == "array":
            kind = self.numeric(s["items"])
            if kind and len({len(v) for v in values}) == 1:
                return [
                    self.fold_numbers(kind, list(col), which) for col in zip(*values)
                ]
            return values[-1]
        return values[-1]

    def window(self, schema, values):
        """The records the relay sends for one window."""
        if self.algorithm == "minmax":
            return [self.fold(schema, None, values, w, "") for w in ("min", "max")]
        which = {"average": "mean", "rms": "rms"}[self.algorithm]
        return [self.fold(schema, None, values, which, "")]


def same(expected, got, path):
    """None if equal (doubles to 1e-12 relative), else where they differ."""
    if isinstance(expected, float) or isinstance(got, float):
        if isinstance(expected, float) and math.isnan(expected):
            return None if isinstance(got, float) and math.isnan(got) else path
        ok = math.isclose(expected, got, rel_tol=1e-12, abs_tol=1e-300)
        return None if ok else path
    if isinstance(expected, dict):
        for k in expected:
            d = same(expected[k], got.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for i, (e, g) in enumerate(zip(expected, got)):
            d = same(e, g, f"{path}[{i}]")
            if d:
                return d
        return None
    if type(expected) is not type(got) or expected != got:
        return path
    return None


def count_values(v):
    if isinstance(v, dict):
        return sum(count_values(x) for x in v.values())
    if isinstance(v, list):
        return sum(count_values(x) for x in v)
    return 1


def main():
    job = json.load(sys.stdin)
    schema = json.loads(job["schema"])
    parsed = fastavro.parse_schema(schema)
    header = bytes.fromhex(job["header"])

    def decode(h):
        d = bytes.fromhex(h)
        if not d.startswith(header):
            raise SystemExit(f"an output lacks the header {header.hex()}: {h}")
        return fastavro.schemaless_reader(io.BytesIO(d[len(header):]), parsed)

    inputs = job["inputs"]
    outputs = job["outputs"]
    algorithm = job["algorithm"]
    factor = job["factor"]

    if algorithm == "downsample":
        if factor:
            expected = [inputs[i] for i in range(factor - 1, len(inputs), factor)]
            if outputs != expected[: len(outputs)] or len(expected) - len(outputs) > 0:
                raise SystemExit(
                    f"downsample by {factor}: got {len(outputs)} datagrams, expected "
                    f"{len(expected)}, the every-{factor}th inputs as sent"
                )
        else:
            at = 0
            for o in outputs:
                try:
                    at = inputs.index(o, at) + 1
                except ValueError:
                    raise SystemExit("downsample: an output is not an input, in order")
        print(json.dumps({"windows": len(outputs), "values": 0}))
        return

    values = [decode(h) for h in inputs]
    got = [decode(h) for h in outputs]
    per = 2 if algorithm == "minmax" else 1
    if len(got) % per:
        raise SystemExit(f"{len(got)} outputs: minmax sends pairs")
    if factor:
        windows = [values[i : i + factor] for i in range(0, len(values) - factor + 1, factor)]
    else:
        # The sequence number (kept last) of each window's output is that of
        # the window's last record: the windows are the runs between them.
        seq = job["seq"]
        index = {v[seq]: i for i, v in enumerate(values)}
        windows, start = [], 0
        for k in range(0, len(got), per):
            end = index[got[k][seq]] + 1
            if end <= start:
                raise SystemExit(f"window {k // per} ends at input {end - 1}, before it starts")
            windows.append(values[start:end])
            start = end
    if len(windows) * per != len(got):
        raise SystemExit(
            f"{len(got)} outputs for {len(windows)} windows of {algorithm} (expected {per} each)"
        )
    folder = Folder(schema, algorithm, job["keep_last"])
    compared = 0
    for w, records in enumerate(windows):
        expected = folder.window(schema, records)
        for j, e in enumerate(expected):
            g = got[w * per + j]
            d = same(e, g, "")
            if d:
                raise SystemExit(
                    f"window {w} ({len(records)} records), output {j}: field {d or '(record)'} "
                    f"differs:\n expected {e!r}\n got      {g!r}"
                )
            compared += count_values(e)
    print(json.dumps({"windows": len(windows), "values": compared}))


if __name__ == "__main__":
    main()
