"""Run inside a network namespace of its own (``unshare -n``) by tests/test_vanished_or_read_only_database.py.

Forwards 127.0.0.1:<port> in this namespace to the test's Unix socket (which reaches the test
database), opens a pooled connection through ``models.db.make_engine``, then takes the
namespace's loopback down: the server host "vanishes" (no FIN, no RST, nothing answers). Prints
how long the next statement on the pooled connection took to fail, or "stuck" after the limit.
The keepalive times are scaled down (x15) so the test runs in seconds."""

import socket
import subprocess
import sys
import threading
import time

from sqlalchemy import text

from models import db
from models.settings import load_settings
from tests.socket_forward import forward_connections

unix_path, database_url, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def connect_to_the_test() -> socket.socket:
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(unix_path)
    return upstream


listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
forward_connections(listener, connect_to_the_test)
port = listener.getsockname()[1]

scaled = {"keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 2}  # 30/10/3 s, about x15 faster
if "tcp_user_timeout" in db.TCP_KEEPALIVES:  # milliseconds: scaled the same way
    scaled["tcp_user_timeout"] = max(1000, db.TCP_KEEPALIVES["tcp_user_timeout"] // 15)
db.TCP_KEEPALIVES = {**db.TCP_KEEPALIVES, **scaled}

scheme, rest = database_url.split("://", 1)
userinfo, tail = rest.split("@", 1)
dbname = tail.split("/", 1)[1].split("?", 1)[0]
engine = db.make_engine(load_settings(database_url=f"{scheme}://{userinfo}@127.0.0.1:{port}/{dbname}"), pool_size=1)
with engine.connect() as connection:  # a pooled connection, then idle in the pool
    connection.execute(text("SELECT 1"))
subprocess.run(["ip", "link", "set", "lo", "down"], check=True)  # the server host vanishes

outcome: dict[str, str] = {}


def use_it() -> None:
    started = time.monotonic()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        outcome["result"] = "answered"
    except Exception as exc:  # noqa: BLE001
        outcome["result"] = f"failed after {time.monotonic() - started:.1f}s: {type(exc).__name__}"


worker = threading.Thread(target=use_it, daemon=True)
worker.start()
worker.join(limit)
print(outcome.get("result", f"stuck after {limit:g}s"), flush=True)
