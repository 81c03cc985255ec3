"""pandas frames from a channel's Avro archive files."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import fastavro
import pandas as pd

__all__ = ["read_archive", "time_field"]

Time = Union[datetime, str, "pd.Timestamp", None]

_TIME_TYPES = ("timestamp-micros", "timestamp-millis")


def time_field(schema: Dict[str, Any]) -> Optional[str]:
    """The name of the schema's first top-level field whose type (or a
    branch of its union) has logical type ``timestamp-micros`` or
    ``timestamp-millis``; ``None`` when it has none."""
    for f in schema.get("fields", []):
        t = f["type"]
        for branch in t if isinstance(t, list) else [t]:
            if isinstance(branch, dict) and branch.get("logicalType") in _TIME_TYPES:
                return str(f["name"])
    return None


def _utc(t: Time, what: str) -> Optional[datetime]:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise ValueError(f"{what}: a time with a time zone is needed (naive times are ambiguous)")
    return ts.tz_convert("UTC").to_pydatetime()


def read_archive(folder: Union[str, Path], start: Time = None, end: Time = None) -> pd.DataFrame:
    """Reads the closed archive files (``*.avro``) of one channel folder, or
    of an export's folder, in file-name order (the names sort by start time),
    into one DataFrame.

    Time is the schema's first ``timestamp-micros``/``timestamp-millis``
    field (:func:`time_field`); with ``start`` and/or ``end`` (aware
    datetimes, pandas Timestamps or RFC 3339 strings) only records whose
    time lies in [start, end) are kept. A schema without such a field
    cannot be cut by time (``ValueError``), but reads whole.

    Nested records become dotted columns as :func:`pandas.json_normalize`
    names them (``outer.inner``); the time column holds UTC datetimes
    (``datetime64[..., UTC]``; the resolution is pandas' choice). Files still being written (``.avro.part``)
    are not read.
    """
    lo, hi = _utc(start, "start"), _utc(end, "end")
    files = sorted(Path(folder).glob("*.avro"), key=lambda p: p.name)
    records: List[Dict[str, Any]] = []
    tf: Optional[str] = None
    for path in files:
        with open(path, "rb") as fo:
            reader = fastavro.reader(fo)
            schema = reader.writer_schema
            tf = time_field(schema) if isinstance(schema, dict) else None
            if (lo is not None or hi is not None) and tf is None:
                raise ValueError(f"{path.name}: the schema has no timestamp-micros/millis field to cut by")
            for rec in reader:
                if tf is not None and (lo is not None or hi is not None):
                    t = rec.get(tf)
                    if t is None:
                        continue
                    if t.tzinfo is None:
                        t = t.replace(tzinfo=timezone.utc)
                    if (lo is not None and t < lo) or (hi is not None and t >= hi):
                        continue
                records.append(rec)  # type: ignore[arg-type]
    frame = pd.json_normalize(records) if records else pd.DataFrame()
    if tf is not None and tf in frame.columns:
        frame[tf] = pd.to_datetime(frame[tf], utc=True)
    return frame
