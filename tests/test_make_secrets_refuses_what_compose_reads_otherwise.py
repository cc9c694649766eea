"""docker/make-secrets.sh reads a part of what compose reads in ``.env``: a value compose would
read otherwise (``$VAR`` interpolation, escapes it does not handle) is refused, naming its
variable and never its value, before anything is written; and ``cli/dev.py``'s own child
environment is named apart from ``models.settings.child_environment``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_child_environments_and_make_secrets import SHELLS, run_make_secrets

SECRET = "s3cr3t-part"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("line", [
    f"POSTGRES_PASSWORD=pa$word{SECRET}",  # compose applied it as "pa" (+ whatever $word... held)
    f"POSTGRES_PASSWORD=pa${{HOME}}{SECRET} # a comment",
    f'POSTGRES_PASSWORD="pa$word{SECRET}"',
    f'POSTGRES_PASSWORD="pa\\$word{SECRET}"',
    f'POSTGRES_PASSWORD="line\\nbreak{SECRET}"',  # compose writes a newline
    f'POSTGRES_PASSWORD="tab\\t{SECRET}"',
    f"POSTGRES_PASSWORD=back\\slash{SECRET}",
    f"POSTGRES_PASSWORD='it\\'s{SECRET}'",  # compose reads it's...; this script read it\ and stopped
])
def test_make_secrets_refuses_a_value_compose_reads_otherwise_naming_it_but_not_its_value(
        tmp_path: Path, shell: str, line: str) -> None:
    """Before, each was written as written (``pa$word``), not as compose had applied it to the
    database (``pa``): the deployment's owner password then no longer matched its database."""
    done = run_make_secrets(shell, tmp_path, f"POSTGRES_USER=owner\n{line}\n")
    assert done.returncode != 0, done.stdout
    assert ".env line 2" in done.stderr and "POSTGRES_PASSWORD" in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout and "word" not in done.stderr, done.stderr
    assert not (tmp_path / "secrets").exists()  # nothing written


@pytest.mark.parametrize("shell", SHELLS)
def test_make_secrets_takes_a_dollar_in_single_quotes_and_a_later_line_that_replaces_a_refused_one(
        tmp_path: Path, shell: str) -> None:
    env_file = ("REDIS_PASSWORD=pa$word\nREDIS_PASSWORD='pa$word'\n"  # the last line counts, as in compose
                'POSTGRES_PASSWORD="q\\"uo\\\\te"\nFLOWER_BASIC_AUTH=\'admin:back\\slash\'\n')
    done = run_make_secrets(shell, tmp_path, env_file)
    assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets"
    assert (secrets / "redis_password").read_text() == "pa$word\n"
    assert (secrets / "postgres_password").read_text() == 'q"uo\\te\n'
    assert (secrets / "flower_basic_auth").read_text() == "admin:back\\slash\n"


def test_the_dev_runner_s_child_environment_has_a_name_of_its_own() -> None:
    """It was ``child_environment`` too, told apart from the one it calls only by an import alias."""
    import cli.dev
    import models.settings

    assert cli.dev.child_environment is models.settings.child_environment
    assert cli.dev.runner_child_environment.__module__ == "cli.dev"
