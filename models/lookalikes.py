"""Letters drawn alike: what a text reads as, for the comparisons that must not be fooled by spelling.

A copy of a certified skill spelled with Cyrillic letters drawn as Latin ones (``о``, U+043E, for
``o``), or in fullwidth or mathematical letters, reads as its original yet embeds far from it; an
API key named ``bооtstrap-admin`` with Cyrillic ``о`` passes for the configured admin key.
:func:`skeleton` is what such a text reads as: NFKC (fullwidth ``ｏ`` and mathematical ``𝐨`` are
``o``), then each letter of another script that Unicode's confusables data draws as a Latin letter
replaced by that letter (the data of the ``confusable-homoglyphs`` package, pinned in
pyproject.toml; its ``is_confusable(..., preferred_aliases=["latin"])`` names them). It is used only
to compare: no stored text, hash or vector is made from it.

Only letters are replaced: a digit or a sign drawn like a letter (``0`` and ``O``, ``|`` and ``l``)
stays, so text with numbers in it reads as it is written. Letters that have no Latin look-alike stay
as they are, so a real Russian or Greek text keeps most of its letters (``д``, ``п``, ``λ``) and
reads as no Latin text.
"""

from __future__ import annotations

import functools
import unicodedata


def skeleton(text: str) -> str:
    """``text`` as it reads: NFKC, then every letter drawn as a Latin letter replaced by it.
    ASCII text is its own skeleton (NFKC keeps it, and it holds no letter of another script),
    returned without a character looked up."""
    if text.isascii():
        return text
    return "".join(_latin_drawn_alike(c) for c in unicodedata.normalize("NFKC", text))


@functools.lru_cache(maxsize=8192)
def _latin_drawn_alike(char: str) -> str:
    """The Latin letter ``char`` is drawn as, or ``char``: for a letter of another script only,
    the first single Latin character among its homoglyphs (the data gives one for all but one of
    the 1,259 letters that have any)."""
    if char.isascii() or not unicodedata.category(char).startswith("L"):
        return char
    # Imported here: the package reads its 900 kB of JSON (about 0.1 s) when imported.
    from confusable_homoglyphs import categories, confusables

    found = confusables.is_confusable(char, greedy=True, preferred_aliases=["latin"])
    for homoglyph in found[0]["homoglyphs"] if found else ():
        if len(homoglyph["c"]) == 1 and categories.alias(homoglyph["c"]) == "LATIN":
            return homoglyph["c"]
    return char
