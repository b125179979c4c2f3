"""Small wording helpers for the command-line messages (no AiiDA import, so any command can use them)."""

from __future__ import annotations

__all__ = ("article", "plural")


def article(name: str) -> str:
    """``name`` with its indefinite article, by its first letter: ``an InstalledCode``, ``a ChargesData``."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def plural(count, noun: str) -> str:
    """``1 atom``, ``2 atoms``; ``? atoms`` when the count is unknown (None)."""
    return f"{'?' if count is None else count} {noun}{'' if count == 1 else 's'}"
