"""Python client of speeddata-relay: the orchestrator's HTTP API (channels,
holds, the live stream) and pandas frames from the Avro archive."""

from .archive import read_archive, time_field
from .client import ApiError, Client, LiveStream

__all__ = ["ApiError", "Client", "LiveStream", "read_archive", "time_field"]
__version__ = "0.1.0"
