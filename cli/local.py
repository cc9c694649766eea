"""Settings for the local ``plant`` commands (``entity restore``, ``entity repairs``,
``signing-keys seal``), which work on the database directly rather than through the API.

They read ``DATABASE_URL`` like every process. Next to ``make dev``, which hands its URLs to
its children only and leaves them in ``$PLANT_DATA_DIR/services.env``, a shell has none set:
these commands then take the runner's from that file (the environment still wins), rather
than the default ``postgres@127.0.0.1:5432/plant``, which is whatever server listens there.
"""

from __future__ import annotations

from pathlib import Path

import click

from models.settings import Settings, load_settings

SERVICES_ENV = "services.env"  # in $PLANT_DATA_DIR: written by cli.dev.write_services_env, read here and by cli.demo_stack


def local_settings(*, as_owner: bool = False) -> Settings:
    """The environment's settings, with ``$PLANT_DATA_DIR/services.env`` under it where it
    exists; when the database comes from that file, a line on stderr says so (naming the file,
    never the URL, which holds a password), so an operator who meant another database sees it.
    ``as_owner``: the schema owner's URL from that file (``OWNER_DATABASE_URL``), for the
    commands that change or compare the schema, where the runner's ``DATABASE_URL`` is the
    runtime role's."""
    settings = load_settings()
    services_env = settings.data_dir / SERVICES_ENV
    if not services_env.is_file():
        return settings
    local = load_settings(_env_file=services_env)
    if local.database_url != settings.database_url:
        if as_owner and (owner := services_env_value(services_env, "OWNER_DATABASE_URL")) is not None:
            local = load_settings(_env_file=services_env, database_url=owner)
        click.echo(f"plant: DATABASE_URL is not set: using the dev runner's database, from {services_env}", err=True)
    return local


def services_env_value(path: Path, name: str) -> str | None:
    """``name``'s value in a ``services.env`` (``cli.dev.write_services_env``: NAME=value lines)."""
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value
    return None
