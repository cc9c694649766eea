"""Facts about the machine and the stack a benchmark ran on, recorded with its results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

import psutil
import redis
from sqlalchemy import text

from bench.harness import BenchStack

PACKAGES = ("celery", "kombu", "flask", "gunicorn", "sqlalchemy", "psycopg", "redis")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    output = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0].split(" [")[0] if output else "unknown"


def machine_facts(stack: BenchStack) -> dict[str, Any]:
    assert stack.settings is not None
    with stack.engine(stack.settings).connect() as connection:
        postgres = connection.execute(text("SHOW server_version")).scalar_one()
    with redis.Redis.from_url(stack.settings.redis_url) as client:
        redis_version = client.info("server")["redis_version"]
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": redis_version,
        "wrk": _wrk_version(),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
    }
