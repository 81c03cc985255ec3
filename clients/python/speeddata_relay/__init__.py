"""Python client of speeddata-relay: the orchestrator's HTTP API (channels,
holds, the live stream), pandas frames from the Avro archive, and SpeedData
v0.6's ``SpeedDataClient`` on the same API."""

from .archive import read_archive, time_field
from .client import ApiError, Client, LiveStream
from .speeddata import SpeedDataClient

__all__ = ["ApiError", "Client", "LiveStream", "SpeedDataClient", "read_archive", "time_field"]
__version__ = "0.1.0"
