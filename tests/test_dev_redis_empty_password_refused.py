"""``plant dev``'s Redis (cli/services.py::EmbeddedRedis) with an empty password file. Since each
byte of the password goes to Redis as ``\\xHH`` inside double quotes, an empty one became
``requirepass ""``, which Redis reads as no password: the runner's Redis served every local
client without one. (Written bare, ``requirepass`` with nothing after it stopped Redis at start.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from cli.ports import claim_port
from cli.services import EmbeddedRedis, ServiceError


def test_an_empty_password_file_stops_the_dev_runner_s_redis_rather_than_serve_without_one(tmp_path: Path) -> None:
    (tmp_path / "redis.password").write_text("\n")
    port = claim_port()
    server = EmbeddedRedis(tmp_path / "redis", port, passwords=True)
    try:
        with pytest.raises(ServiceError, match="empty"):
            server.start()
        with pytest.raises(redis.ConnectionError), redis.Redis(port=port, socket_timeout=2) as client:
            client.ping()  # nothing serves without a password
    finally:
        server.stop()
