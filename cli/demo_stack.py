"""The stack the guided demo runs on: ``plant dev`` as a child process with a data dir of its own.

The demo must never touch the developer's own stack or databases, so the child gets its
own ``PLANT_DATA_DIR`` and ports, and every variable that could point it at shared
servers, keys or credentials is removed from its environment. The data dir is wiped at
the start of each demo, but only if it carries the demo's marker file (or is empty): the
demo never deletes a directory it did not create. The runner's output goes to
``<data dir>/stack.log``; leaving the ``with`` block SIGTERMs it, and it stops everything
it started. The runner is handed a pipe's read end whose write end only the demo holds, so a
demo killed outright (SIGKILL) stops its stack all the same (``cli.watchdog.stop_when_closed``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import httpx

from cli.bootstrap import ADMIN_KEY_FILE
from cli.client import ClientConfig
from cli.errors import PlantCliError
from cli.local import SERVICES_ENV, services_env_value
from cli.postgres_server import running_postmaster
from cli.services import private_log
from cli.watchdog import LIFELINE_VARIABLE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER_FILE = ".plant-demo"
HEALTH_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 60.0
# Shared servers, keys and credentials the demo's stack must not inherit.
ISOLATED_VARIABLES = (
    "DATABASE_URL", "PLANT_DATABASE_URL", "REDIS_URL", "PLANT_REDIS_URL", "PLANT_PG_PORT", "PLANT_REDIS_PORT",
    "PLANT_SIGNING_KEY", "PLANT_SIGNING_KEY_FILE", "PLANT_RETIRED_SIGNING_KEYS_DIR", "PLANT_ADMIN_API_KEY",
    "PLANT_FLOWER_BASIC_AUTH", "PLANT_URL", "PLANT_API_KEY", "PLANT_BIND", "PORT",
    "PROMETHEUS_MULTIPROC_DIR",  # the demo's gunicorn empties it at start: never the developer's own
    # The secrets' file variants (models/settings.py, SECRET_FILE_SETTINGS).
    "DATABASE_URL_FILE", "PLANT_DATABASE_URL_FILE", "REDIS_URL_FILE", "PLANT_REDIS_URL_FILE",
    "PLANT_ADMIN_API_KEY_FILE", "PLANT_FLOWER_BASIC_AUTH_FILE",
)


def prepare_data_dir(data_dir: Path) -> None:
    """An empty data dir marked as the demo's; refuse to clear a directory that is not, or one
    whose stack still runs (another demo's: wiping it would pull its database from under it)."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER_FILE).is_file():
            raise PlantCliError(f"{data_dir} exists and is not a demo directory: remove it or pass --data-dir")
        if (pid := running_postmaster(data_dir / "postgres" / "postmaster.pid")) is not None:
            raise PlantCliError(f"a demo is still running on {data_dir} (its PostgreSQL is process {pid}): "
                                "stop it, or pass another --data-dir and ports")
        shutil.rmtree(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # its stack's log and keys: for this user only
    (data_dir / MARKER_FILE).write_text("created by `plant demo`; wiped by the next demo\n")
    (data_dir / ".gitignore").write_text("*\n")


def require_free_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PlantCliError(f"{what} port {port} is in use ({exc.strerror}); pick another one") from exc


@dataclass
class DemoStack:
    """``plant dev`` on ``data_dir`` and ``port``; a context manager that starts and stops it."""

    data_dir: Path
    port: int
    flower_port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _lifeline: int | None = None  # the write end of the runner's lifeline pipe

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "stack.log"

    def client_config(self) -> ClientConfig:
        key_file = self.data_dir / ADMIN_KEY_FILE
        return ClientConfig(self.url, key_file.read_text().strip(), key_file)

    def database_url(self) -> str:
        """The libpq URL the runner wrote into ``services.env``."""
        value = services_env_value(self.data_dir / SERVICES_ENV, "DATABASE_URL")
        if value is None:
            raise PlantCliError(f"no DATABASE_URL in {self.data_dir / SERVICES_ENV}")
        return value.replace("postgresql+psycopg://", "postgresql://", 1)

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in ISOLATED_VARIABLES}
        env.update(PLANT_DATA_DIR=str(self.data_dir.resolve()), PLANT_PORT=str(self.port),
                   PLANT_FLOWER_PORT=str(self.flower_port), PYTHONUNBUFFERED="1", **self.extra_env)
        return env

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        require_free_port(self.port, "API")
        require_free_port(self.flower_port, "Flower")
        self._log = private_log(self.log_path)
        read_fd, self._lifeline = os.pipe()
        # Its own session: a Ctrl-C at the terminal reaches the demo, which then stops the
        # runner in order, instead of hitting every process at once.
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "dev"], cwd=PROJECT_ROOT,
                env={**self.environment(), LIFELINE_VARIABLE: str(read_fd)}, pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            os.close(read_fd)

    def wait_until_healthy(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict[str, Any]:
        """The ``/health`` body once it says ``ok``; PlantCliError if the runner dies or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PlantCliError(f"the demo stack exited with status {self.process.returncode}; see {self.log_path}")
            try:
                body = httpx.get(self.url + "/health", timeout=5).json()
                if body.get("status") == "ok":
                    return body
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise PlantCliError(f"the demo stack was not healthy after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> int | None:
        """SIGTERM the runner (it stops its children and servers) and wait; SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        return self.process.returncode
