"""A real orchestrator on loopback for the client's tests.

The binaries come from ``$SPEEDDATA_BIN_DIR`` (default: the repository's
``target/debug``). Everything listens on 127.0.0.1; multicast goes out on
interface 127.0.0.1 with TTL 0.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import fastavro
import pytest
import requests

REPO = Path(__file__).resolve().parents[3]
# The client as it is in this tree (scripts/test also installs it, which
# checks that it installs and brings its dependencies).
sys.path.insert(0, str(REPO / "clients" / "python"))
BIN_DIR = Path(os.environ.get("SPEEDDATA_BIN_DIR", REPO / "target" / "debug"))
SCHEMA: Dict[str, Any] = json.loads((REPO / "channels.d" / "example.avsc").read_text())
PARSED = fastavro.parse_schema(SCHEMA)
T0_US = 1_795_383_000_000_000  # 2026-11-23T...Z, microseconds

_groups = iter(range(1, 250))


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_group() -> str:
    """A group in 239.255.0.0/16 no other test of this run uses (third octet
    from the PID, apart from the Rust tests' 100..199)."""
    return f"239.255.{200 + os.getpid() % 50}.{next(_groups)}"


def channel_toml(name: str, port: int, decimated: bool = True) -> str:
    """A channel like channels.d/example.toml: unicast receive on loopback,
    both multicast outputs on interface 127.0.0.1 with TTL 0, the archive
    under the fleet's archive/ (from [defaults])."""
    text = f"""name = "{name}"

[receive]
bind = "127.0.0.1:{port}"
validate = true

[archive]
flush_interval = "100ms"

[full]
group = "{unique_group()}:{free_udp_port()}"
interface = "127.0.0.1"
ttl = 0

[decimated]
group = "{unique_group()}:{free_udp_port()}"
interface = "127.0.0.1"
ttl = 0
algorithm = "downsample"
factor = 1
"""
    return text if decimated else text[: text.index("\n[decimated]")] + "\n"


def record(counter: int) -> Dict[str, Any]:
    t = counter / 1000.0
    return {
        "time": T0_US + counter * 1000,
        "message": f"m{counter}",
        "counter": counter,
        "sine_wave": float(counter) / 7.0,
        "ramp": t - int(t),
        "square_wave": 1.0 if counter % 2 else -1.0,
        "noise": -0.5 + counter / 1e6,
    }


def datum(rec: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, rec)
    return buf.getvalue()


def send(port: int, records: List[Dict[str, Any]], pace_s: float = 0.0005) -> None:
    """Sends each record as one datagram to 127.0.0.1:port, paced."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for r in records:
            s.sendto(datum(r), ("127.0.0.1", port))
            if pace_s:
                time.sleep(pace_s)


@dataclass
class Fleet:
    dir: Path
    url: str
    token: Optional[str] = None
    proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
    ports: Dict[str, int] = field(default_factory=dict)

    def archive_dir(self, channel: str) -> Path:
        return self.dir / "archive" / channel


def _start(token: Optional[str]) -> Iterator[Fleet]:
    orchestrator = BIN_DIR / "orchestrator"
    if not orchestrator.exists():
        pytest.fail(f"{orchestrator} is missing: build it (cargo build -p relay-channel -p orchestrator --bins) or set SPEEDDATA_BIN_DIR")
    d = Path(tempfile.mkdtemp(prefix="speeddata-py-"))
    (d / "channels.d").mkdir()
    http_port = free_tcp_port()
    http = f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
    if token is not None:
        (d / "api-token").write_text(token + "\n")
        http += 'token_file = "api-token"\n'
    (d / "orchestrator.toml").write_text(
        'channels_dir = "channels.d"\nstate_dir = "state"\n\n'
        + http
        + '\n[supervisor]\nbackoff_initial = "100ms"\n\n[defaults]\narchive.dir = "archive"\n'
    )
    port = free_udp_port()
    shutil.copy(REPO / "channels.d" / "example.avsc", d / "channels.d" / "example.avsc")
    (d / "channels.d" / "example.toml").write_text(
        channel_toml("example", port).replace('name = "example"\n', 'name = "example"\nschema = "example.avsc"\n')
    )
    fleet = Fleet(dir=d, url=f"http://127.0.0.1:{http_port}", token=token, ports={"example": port})
    log = open(d / "orchestrator.log", "wb")
    fleet.proc = subprocess.Popen(
        [str(orchestrator), "run", "--config", str(d / "orchestrator.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(fleet.url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if fleet.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the orchestrator did not get ready:\n" + (d / "orchestrator.log").read_text())
            time.sleep(0.05)
        yield fleet
    finally:
        fleet.proc.send_signal(signal.SIGTERM)
        try:
            fleet.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fleet.proc.kill()
            fleet.proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """An orchestrator without a token (writes let in from loopback) and
    one channel, example, ready."""
    yield from _start(None)


@pytest.fixture(scope="session")
def token_fleet() -> Iterator[Fleet]:
    """An orchestrator with http.token_file."""
    yield from _start("s3cret-token-4711")
