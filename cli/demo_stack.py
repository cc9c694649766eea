"""The stack the guided demo runs on: ``plant dev`` as a child process with a data dir of its own.

The demo must never touch the developer's own stack or databases, so the child gets its
own ``PLANT_DATA_DIR`` and ports, and none of the developer's settings: each is taken out of
its environment under every name Plant reads it by, ``*_FILE`` variants included
(``models.settings.child_environment``), and so is every other ``PLANT_*`` variable. The data dir is wiped at
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
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import httpx

from cli.bootstrap import ADMIN_KEY_FILE
from cli.client import ClientConfig
from cli.errors import PlantCliError
from cli.local import SERVICES_ENV, services_env_value
from cli.postgres_server import running_postmaster
from cli.services import PortTaken, private_log
from cli.services import require_free_port as _require_free_port
from cli.watchdog import LIFELINE_VARIABLE
from models.settings import Settings, child_environment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER_FILE = ".plant-demo"
HEALTH_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 60.0
# What the demo's stack must not inherit besides every setting (which models.settings.child_environment
# resets, under each of its names and its *_FILE variants): every other PLANT_* variable (plant dev's
# ports, the CLI's server and key, gunicorn's bind), and the bind gunicorn takes from PORT or its own
# GUNICORN_CMD_ARGS. The developer's servers, keys, credentials and directories (a
# PROMETHEUS_MULTIPROC_DIR the demo's gunicorn would empty) stay theirs.
NOT_PLANT_SETTINGS = ("PORT", "GUNICORN_CMD_ARGS")


def _inherited(environ: Mapping[str, str]) -> dict[str, str]:
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()  # PLANT_, compared in any case as Settings does
    return {name: value for name, value in environ.items()
            if not (prefix and name.upper().startswith(prefix)) and name not in NOT_PLANT_SETTINGS}


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
    try:
        _require_free_port(port, what)
    except PortTaken as exc:
        raise PlantCliError(str(exc)) from exc


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
        """The runner's environment: this process's, with none of the developer's settings (every
        one reset) nor other PLANT_* variables (:func:`_inherited`), then the demo's own data dir and
        ports, and ``extra_env``."""
        return child_environment(_inherited(os.environ), reset=Settings.model_fields,
                                 PLANT_DATA_DIR=str(self.data_dir.resolve()), PLANT_PORT=str(self.port),
                                 PLANT_FLOWER_PORT=str(self.flower_port), PYTHONUNBUFFERED="1", **self.extra_env)

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
