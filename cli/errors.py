"""What the ``plant`` command exits with, and how it says why: always one line on stderr.

Exit codes: 0 success; 1 an API, connection or local error; 2 a usage error (click's own);
3 a job that ended ``failed`` or ``cancelled``; 4 a report, digest, history, certificate or repair
record that failed verification; 5 a job that succeeded without doing what was asked. Every failure
prints ``plant: <what went wrong>`` and nothing else, so a script can rely on the code and a
person can read the line.
"""

from __future__ import annotations

import traceback
from typing import IO, Any

import click
from click.exceptions import NoArgsIsHelpError

from models.canonical import visible_text

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_UNSUCCESSFUL = 3
EXIT_NOT_VERIFIED = 4
EXIT_OUTCOME_UNMET = 5

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 API, connection or local error; 2 usage error; "
    "3 the job ended failed or cancelled; 4 a report, digest, history, certificate or repair record failed verification; "
    "5 the job succeeded but did not do what was asked (a skill rejected, agents left unplaced, an audit "
    "finding non-compliant entities or run-level findings)."
)


class PlantCliError(click.ClickException):
    """A failure shown as one ``plant: ...`` line; exit code 1 unless a subclass says otherwise."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        # One line, whatever the message quotes from the server (a job's error, a problem's detail).
        click.echo(f"plant: {visible_text(self.format_message())}", err=file is None, file=file)


class JobUnsuccessful(PlantCliError):
    """The job ran to an end other than ``succeeded``."""

    exit_code = EXIT_JOB_UNSUCCESSFUL


class OutcomeUnmet(PlantCliError):
    """The job succeeded, and its result says what was asked was not done: a script that
    gates on ``plant certify --wait`` must not go on with a rejected skill."""

    exit_code = EXIT_OUTCOME_UNMET


class VerificationFailed(PlantCliError):
    """A signed document did not verify against the keys it was checked with."""

    exit_code = EXIT_NOT_VERIFIED


class OneLineUsageError(click.UsageError):
    """click's usage error, shown as one line with a pointer to ``--help``."""

    def show(self, file: IO[Any] | None = None) -> None:
        hint = f" (try '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"plant: {self.format_message()}{hint}", err=file is None, file=file)


class PlantGroup(click.Group):
    """The root group: every usage error below it is shown as one line (exit code 2)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            if _shown_as_click_does(error):
                raise
            raise OneLineUsageError(error.format_message(), error.ctx) from error

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            if _shown_as_click_does(error):
                raise
            raise OneLineUsageError(error.format_message(), error.ctx) from error
        except click.ClickException:
            raise
        except Exception as error:  # what a command did not turn into its own line
            message = one_line(error)
            if message is None:
                raise  # a bug: its traceback is what to report
            raise PlantCliError(message) from error


def _shown_as_click_does(error: click.UsageError) -> bool:
    # "plant jobs" alone prints that group's help; a converted error is already one line.
    return isinstance(error, (NoArgsIsHelpError, OneLineUsageError))


def _raised_parsing_a_database_url(error: Exception) -> bool:
    """Whether SQLAlchemy's URL parser raised ``error`` (a port that is not a number is a bare
    ValueError from it, which says nothing of where it came from otherwise)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith("sqlalchemy/engine/url.py")


def one_line(error: Exception) -> str | None:
    """The line for an error a local command can meet, or None for anything else: the
    database unreachable or refusing a statement (a schema not migrated), a domain error (a
    revoked configured admin key, no signing key), a file that cannot be written, a setting
    or key that is not valid."""
    from alembic.util.exc import CommandError
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from models.errors import PlantError

    if isinstance(error, PlantError):
        return error.detail
    if isinstance(error, NoSuchModuleError):  # "Can't load plugin: sqlalchemy.dialects:<scheme>"
        return f"DATABASE_URL names no database SQLAlchemy has here ({error}): use postgresql://..."
    if isinstance(error, (ArgumentError, ValueError)) and _raised_parsing_a_database_url(error):
        # Nothing of the URL in the line, not even the parser's quote of its port: with an
        # unescaped "@" in the password, what it takes for the port is part of the password.
        why = "its port is not a number" if not isinstance(error, ArgumentError) else "it does not parse"
        return f"DATABASE_URL is not a database URL ({why}): postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
    if isinstance(error, CommandError):  # Alembic's: a revision it cannot reach, a database not at head
        return f"migrations: {' '.join(str(error).split())}"
    if isinstance(error, BrokenPipeError):
        return None  # output piped into `head`: click ends quietly, as it should
    if isinstance(error, DBAPIError) or type(error).__module__.startswith("psycopg"):
        # Through SQLAlchemy or, for `db upgrade`'s grants, psycopg itself. psycopg's own
        # OperationalError is a failed connection; its subclasses are a database that answered
        # (a statement or lock timeout, a deadlock), as is any other refusal (a schema not
        # migrated, a value too long).
        cause = getattr(error, "orig", None) or error
        said = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if type(cause).__name__ == "OperationalError":
            return f"cannot reach the database: {said}"
        hint = " (is the schema migrated? run `plant db upgrade`)" if type(cause).__name__ == "UndefinedTable" else ""
        return f"database error: {said}{hint}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, UnicodeError):
        return f"a value holds characters it cannot carry ({error.__class__.__name__}); keys and URLs are ASCII"
    if isinstance(error, SettingsError):  # a secret's *_FILE variable: set twice, or its file unreadable
        return f"invalid setting: {error}"
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or error.title
        return f"invalid setting {where}: {first.get('msg', 'not valid')}"
    return None
