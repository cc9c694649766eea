"""A static route beside a parameterised one is not also the parameterised one.

``/agents/assign-teams`` (POST) sits beside ``/agents/<entity_id>`` (GET, PATCH), and werkzeug,
finding the static rule lacks the method, went on to the parameterised one: ``GET
/agents/assign-teams`` was a 422 for ``entity_id`` (and ``PATCH /genesis/skills/search`` one for
the skill's), where the route exists and lacks the method, a 405 naming its own methods. The
default converter of each such rule refuses its static siblings' names there, so such a request
matches none and is the 405 (and OPTIONS names the static route's methods alone); any other value,
a malformed id included (``/jobs/search``, ``/genesis/skills/assign-teams``), is read as it was.
The names are taken from the app's rules once they are all added (:func:`refuse_static_sibling_names`).
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter, UnicodeConverter, ValidationError


class _SiblingNamesRefused(UnicodeConverter):
    refused: frozenset[str] = frozenset()  # each rule's own converter is given its names

    def to_python(self, value: str) -> str:
        if value in self.refused:
            raise ValidationError()  # werkzeug: no match here, so a 405 if another rule has the path
        return value


def install_default_converter(app: Flask) -> None:
    """Before any rule is added: the default converter, refusing no name until it is told."""
    app.url_map.converters["default"] = _SiblingNamesRefused


def static_siblings(rule: str, rules: list[str]) -> dict[str, frozenset[str]]:
    """For each variable of ``rule``, the static segments other ``rules``, alike but there, hold in
    its place: ``{"entity_id": {"assign-teams"}}`` for ``/agents/<entity_id>`` beside
    ``/agents/assign-teams``."""
    parts = rule.split("/")
    found: dict[str, set[str]] = {}
    for other in (r.split("/") for r in rules):
        differ = [i for i, (a, b) in enumerate(zip(parts, other, strict=False)) if a != b]
        if len(other) == len(parts) and len(differ) == 1 and parts[differ[0]].startswith("<") \
                and not other[differ[0]].startswith("<"):
            variable = parts[differ[0]][1:-1].split(":")[-1]
            found.setdefault(variable, set()).add(other[differ[0]])
    return {variable: frozenset(names) for variable, names in found.items()}


def refuse_static_sibling_names(app: Flask) -> None:
    """Once every rule is added: each rule's default converters refuse :func:`static_siblings`."""
    rules = list(app.url_map.iter_rules())
    strings = [rule.rule for rule in rules]
    for rule in rules:
        for variable, names in static_siblings(rule.rule, strings).items():
            converter = rule._converters.get(variable)  # noqa: SLF001  (werkzeug's per-rule converters)
            if isinstance(converter, _SiblingNamesRefused):
                converter.refused = names


def methods_matching(adapter: MapAdapter, methods: Iterable[str]) -> list[str]:
    """Those of ``methods`` a request to the adapter's path would be routed for: werkzeug's
    ``allowed_methods`` names every rule whose pattern matches, a refused sibling's too."""
    def routed(method: str) -> bool:
        try:
            adapter.match(method=method)
        except HTTPException:
            return False
        return True

    return [method for method in methods if routed(method)]
