"""What a reader following the README (and the docs it links) literally gets.

A walk through the Quickstart, the `plant` CLI section and the short tour against `make dev`
found these places where the code, or the docs, did not give what the README promises.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


# --- /docs: "Swagger UI, served locally, nothing fetched from a CDN" -------------------------


def _swagger_config(page: str) -> dict:
    """The config the /swagger page spreads over Swagger UI's defaults (``...swagger_config``)."""
    match = re.search(r"const swagger_config = JSON\.parse\(`(?P<config>.*?)`\);", page)
    assert match, "the /swagger page no longer reads a config: check this test still means something"
    return json.loads(match["config"]) or {}


def test_the_docs_page_turns_off_swagger_ui_s_online_validator(client) -> None:
    """Swagger UI's default ``validatorUrl`` is https://validator.swagger.io/validator: on any host
    but localhost, /docs drew a badge image from there carrying this deployment's /openapi.json
    URL, which that service then fetched. The page must set it to "none"."""
    page = client.get("/docs", follow_redirects=True)
    assert page.status_code == 200
    bundle = client.get("/swagger/js/swagger-ui-bundle.js").data.decode()
    assert 'validatorUrl:"https://validator.swagger.io/validator"' in bundle  # the default the page overrides
    assert _swagger_config(page.data.decode()).get("validatorUrl") == "none"


# --- the CLI section's commands, in order ------------------------------------------------------


def _cli_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## The `plant` CLI")
    block = readme[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_every_file_the_cli_section_reads_is_written_by_a_command_before_it() -> None:
    """``plant report verify ... --csv audit.csv`` came with no command that writes audit.csv
    (``--csv`` must name an existing file), so the section run as written stopped with a usage
    error there. Every file a command reads (``--jwks``, ``--digest``, ``--csv``, ``--against``,
    a verify's FILE) must be one an earlier line wrote (``-o FILE`` or ``> FILE``)."""
    written: set[str] = set()
    for line in _cli_block():
        words = line.split()
        read = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--jwks", "--digest", "--csv", "--against")]
        if words[1:3] in (["report", "verify"], ["digest", "verify"], ["history", "verify"]):
            read.append(words[3])
        missing = [name for name in read if name not in written]
        assert not missing, f"`{line}` reads {missing}, which no command before it writes"
        written.update(words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-o", ">"))


# --- docs/deploy.md: "`.env.example` documents every variable" ----------------------------------


def test_env_example_documents_every_variable_compose_substitutes() -> None:
    """REDIS_MAXMEMORY (``${REDIS_MAXMEMORY:-1gb}``) was in no line of .env.example, though
    docs/deploy.md says it documents every variable: an operator sizing Redis had to read the
    compose file to learn the knob existed."""
    compose_text = (ROOT / "docker-compose.yml").read_text()
    yaml.safe_load(compose_text)  # still a compose file
    substituted = {m["name"] for m in re.finditer(r"(?<!\$)\$\{(?P<name>[A-Za-z_]\w*)", compose_text)
                   if not compose_text[:m.start()].rsplit("\n", 1)[-1].lstrip().startswith("#")}
    documented = {line.partition("=")[0].strip() for line in (ROOT / ".env.example").read_text().splitlines()
                  if "=" in line and not line.lstrip().startswith("#")}
    assert substituted - documented == set()


# --- exit codes: README's list and `plant --help`'s --------------------------------------------


def test_plant_help_names_every_verification_that_exits_4() -> None:
    """``plant history verify`` and ``plant entity repairs`` exit 4 when what they check does
    not verify, but ``plant --help`` said 4 was "a report or digest failed verification", and
    the README left the repair records out: a script reading exit 4 of ``entity repairs`` could
    not tell from either what it meant."""
    from click.testing import CliRunner

    from cli.main import cli

    shown = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    assert "4 a report, digest, history, certificate or repair record failed verification" in shown
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "4 a report, digest, history, certificate or repair record (`entity repairs`) failed verification" in readme


# --- what tests/test_docs_references.py does not read: commands, routes, modules, migrations ------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
        ROOT / "terraform" / "README.md"]


def _plant_commands() -> list[tuple[str, str]]:
    """Every ``plant ...`` the docs spell: inline in backticks, or a line of a ``sh`` block."""
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        found.update((doc.name, command) for command in re.findall(r"`(plant [^`|]+)`", text))
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            found.update((doc.name, line.split("#", 1)[0].strip()) for line in block.splitlines()
                         if line.strip().startswith("plant "))
    return sorted(found)


def test_every_plant_command_and_option_the_docs_spell_exists() -> None:
    """A renamed subcommand or option would leave the README teaching one that exits 2."""
    import click

    from cli.main import cli

    commands = _plant_commands()
    assert len(commands) > 40
    for doc, command in commands:
        node: click.Command = cli
        words = command.split()[1:]
        while isinstance(node, click.Group) and words and words[0] in node.commands:
            node, words = node.commands[words[0]], words[1:]
        assert not isinstance(node, click.Group) or not words or words[0].startswith("-"), \
            f"{doc}: `{command}`: no command {words[0]!r}"
        options = {opt for param in node.params for opt in [*param.opts, *param.secondary_opts]}
        for word in words:
            if re.fullmatch(r"--[\w-]+(=.*)?|-[a-z]", word):
                assert word.split("=")[0] in options, f"{doc}: `{command}`: {node.name} has no option {word}"


def test_every_api_route_the_docs_name_is_served(app) -> None:
    """``/api/v1/...`` paths in the docs (ids and ``…`` as any segment) match a route the app serves."""
    served = [re.sub(r"<[^>]+>", "{}", rule.rule) for rule in app.url_map.iter_rules()]
    named = {(doc.name, path.rstrip(".,;:)")) for doc in DOCS
             for path in re.findall(r"/api/v1/[\w\-/{}….]+", doc.read_text())}
    assert len(named) > 20
    for doc, path in sorted(named):
        segments = re.sub(r"\{[^}]*\}|[0-9a-f]*…", "\0", path.rstrip("/"))  # an id, or an elided one
        pattern = re.escape(segments).replace("\0", "[^/]+")
        assert any(re.fullmatch(pattern, rule.replace("{}", "id")) for rule in served), \
            f"{doc} names {path}, which no route serves"


def test_every_dotted_module_name_and_migration_the_docs_cite_exists() -> None:
    """``models.certificates.verify_certificate`` and "migration 0022" are citations too."""
    for doc in DOCS:
        text = doc.read_text()
        for dotted in set(re.findall(r"`((?:models|web|tasks|worker|cli)\.[\w.]+)`", text)):
            parts = dotted.split(".")
            module = next((ROOT.joinpath(*parts[:i]).with_suffix(".py") for i in range(len(parts), 0, -1)
                           if ROOT.joinpath(*parts[:i]).with_suffix(".py").is_file()), None)
            if module is None:  # a logger's name (`web.requests`), not a module
                assert dotted in "".join(p.read_text() for p in (ROOT / parts[0]).glob("*.py")), dotted
                continue
            rest = parts[len(module.relative_to(ROOT).with_suffix("").parts):]
            if rest:
                assert re.search(rf"^(def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", module.read_text(), re.M), \
                    f"{doc.name} cites {dotted}, which {module.relative_to(ROOT)} does not define"
        for number in set(re.findall(r"\bmigrations? (\d{4})\b", text)):
            assert list((ROOT / "migrations" / "versions").glob(f"{number}_*.py")), f"{doc.name}: migration {number}"
