"""Separate Celery workers and beat for chaos tests: own Redis database, own settings.

The suite's shared worker listens on the test Redis database 0; a ``ChaosStack``
publishes to and consumes from another, so its processes can be killed, and its
settings (short leases, fast recovery) changed, without touching other tests.

A worker started with ``restart=True`` is restarted when it exits on its own, as the
deployments do (docker-compose's ``restart: unless-stopped``, Cloud Run): kombu's Redis
transport can crash a worker that loses the broker while it holds unacknowledged
messages (``AttributeError: 'NoneType' object has no attribute 'hostname'`` in
``restore_unacked``), and what the chaos tests check is that no job is lost then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from models.settings import Settings
from tasks.celery_app import create_celery
from tests.conftest import REPO_ROOT, child_env, stop_process_group, wait_for
from web import create_app

FAST_RECOVERY = {
    "PLANT_JOB_LEASE_SECONDS": "2",
    "PLANT_REQUEUE_INTERVAL_SECONDS": "0.5",
    "PLANT_REQUEUE_AFTER_SECONDS": "0.5",
    "PLANT_RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "PLANT_RETRY_BACKOFF_CAP_SECONDS": "1",
}


class ChaosStack:
    def __init__(self, settings: Settings, log_dir: Path, *, redis_url: str | None = None, app: str = "worker.app",
                 **env: str) -> None:
        url = redis_url or settings.redis_url.rsplit("/", 1)[0] + "/7"
        if redis_url is None:
            # Each test's stack starts on an empty database: what an earlier stack on this one left
            # (the sweeps its beat sent while its worker could not take them, which never expire;
            # a message its killed worker held) is not this test's worker's to run first.
            with redis.Redis.from_url(url) as left:
                left.flushdb()
        self.app = app  # the Celery app module its processes run
        self.settings = settings.model_copy(update={"redis_url": url})
        self.env = {**FAST_RECOVERY, **env}
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.celery = create_celery(self.settings)
        self.restarts: Counter[str] = Counter()
        self._stopping = threading.Event()

    def client(self, admin_key: str) -> Any:
        client = create_app(self.settings).test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
        return client

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app, *argv], cwd=REPO_ROOT,
            env=child_env(self.settings, **self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def node(self, name: str) -> str:
        return f"{name}-{os.getpid()}@{os.uname().nodename}"

    def start_worker(self, name: str, concurrency: int = 2, *, restart: bool = False) -> subprocess.Popen:
        argv = ["worker", "-Q", "default,audit,maintenance", "-c", str(concurrency), "-n", self.node(name),
                "--without-mingle", "--without-gossip"]
        process = self._spawn(name, argv)
        wait_for(lambda: process.poll() is not None or self.celery.control.ping(timeout=0.5, destination=[self.node(name)], limit=1),
                 timeout=60, what=f"worker {name}")
        assert process.poll() is None, (self.log_dir / f"{name}.log").read_text()[-3000:]
        if restart:
            threading.Thread(target=self._supervise, args=(name, argv), daemon=True).start()
        return process

    def _supervise(self, name: str, argv: list[str]) -> None:
        """Restart ``name`` whenever it exits on its own, until :meth:`stop` or :meth:`kill`."""
        while not self._stopping.wait(0.2):
            process = self.processes.get(name)
            if process is None:
                return  # killed on purpose
            if process.poll() is not None and not self._stopping.is_set():
                self.restarts[name] += 1
                self._spawn(name, argv)

    def start_beat(self) -> subprocess.Popen:
        return self._spawn("beat", ["beat", "-s", str(self.log_dir / "beat-schedule"), "--loglevel=INFO"])

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        self._stopping.set()
        for process in list(self.processes.values()):
            stop_process_group(process)
        self.processes.clear()
