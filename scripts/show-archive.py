#!/usr/bin/env python3
"""Summarises archive files with fastavro: records, codec, first and last record."""
import sys

import fastavro

for path in sys.argv[1:]:
    with open(path, "rb") as fo:
        reader = fastavro.reader(fo)
        first = last = None
        n = 0
        for rec in reader:
            first = first or rec
            last = rec
            n += 1
    print(f"{path}: {n} records, codec {reader.codec}")
    if n:
        print(f"  first: {first}")
        print(f"  last:  {last}")
