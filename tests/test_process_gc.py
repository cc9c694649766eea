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
        "import gc, runpy\n"
        "from web import create_app\n"
        "config = runpy.run_path('gunicorn.conf.py')\n"
        "config['post_worker_init'](None)\n"
        "print(gc.get_freeze_count())"
    )
    assert after > LOADED
