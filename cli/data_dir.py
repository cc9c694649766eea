"""The dev runner's data dir: made for its user only and ignored by git, and locked while a
runner (or, after a runner killed outright, its watchdog) uses it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.services import ServiceError

RUNNER_LOCK = "runner.lock"  # in the data dir: held by the runner and its watchdog (data_dir_lock)


def make_data_dir(data_dir: Path) -> None:
    """The data dir, for this user only and ignored by git whatever its name: it holds the dev
    signing key, the servers' passwords and the admin key, and only ``.plant`` is in the
    repository's .gitignore (README: two runners side by side need two data dirs). Made as
    the umask had it (0755), it let any local user read the servers' logs and Redis's
    append-only files in it. One that exists keeps its mode (``PLANT_DATA_DIR`` may name a
    directory of the user's); the files the runner and its children write there are private
    all the same (:data:`cli.services.CHILD_UMASK`)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore = data_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[int]:
    """Hold ``data_dir``'s lock (``runner.lock``, flock: gone with its holders, however they
    end) for the block; ServiceError if another runner holds it. A second runner on one data
    dir was refused only by PostgreSQL's own lock: with ``DATABASE_URL`` set, it started a
    second Redis on the first one's append-only files, and wrote its URLs over the first's."""
    fd = os.open(data_dir / RUNNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceError(f"another plant dev runs on {data_dir} (or its watchdog is still stopping what it "
                               "left): stop it, or give this one a PLANT_DATA_DIR (and ports) of its own") from None
        yield fd
    finally:
        os.close(fd)
