"""Long-lived processes freeze what they start with, so the cyclic GC stops walking it.

Each check runs in a fresh interpreter: the hook is reached the way the server reaches it
(Celery's ``worker_process_init`` signal in a pool child, gunicorn's ``post_worker_init``
from its config file), and the interpreter reports how many objects it froze.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Far above what an interpreter freezes with nothing imported, far below a loaded app.
LOADED = 50_000


def _frozen_after(script: str) -> int:
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_a_celery_pool_child_freezes_its_startup_objects() -> None:
    before = _frozen_after("import gc, worker.app; print(gc.get_freeze_count())")
    after = _frozen_after(
        "import gc\n"
        "from celery.signals import worker_process_init\n"
        "import worker.app\n"
        "worker_process_init.send(sender=None)\n"
        "print(gc.get_freeze_count())"
    )
    assert before == 0
    assert after > LOADED


def test_a_gunicorn_worker_freezes_the_loaded_app() -> None:
    after = _frozen_after(
        "import gc, logging, os, runpy, types\n"
        "from web import create_app\n"
        "config = runpy.run_path('gunicorn.conf.py')\n"
        "config['post_worker_init'](types.SimpleNamespace(log=logging.getLogger('gunicorn.error'), pid=os.getpid()))\n"
        "print(gc.get_freeze_count())"
    )
    assert after > LOADED


def test_gunicorn_opens_no_control_socket_that_every_server_of_the_user_would_share() -> None:
    """gunicorn 25.1+ opens a control socket at one path per user: every Plant server on a host
    (two `make dev` runners, the tests) shared it, and the first to stop removed it for the
    rest. The setting must be one gunicorn knows, or it would be silently ignored."""
    import runpy

    from gunicorn.config import KNOWN_SETTINGS

    config = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert "control_socket_disable" in {setting.name for setting in KNOWN_SETTINGS}
    assert config["control_socket_disable"] is True
