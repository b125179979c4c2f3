"""The values of the command-line options, parsed: ``key=value`` items, ``El=Z`` lists and wall times. Each
failure is a one-line :class:`click.BadParameter` that names the option."""

from __future__ import annotations

import json

import click

__all__ = ("parse_param", "parse_zval", "parse_walltime")


def parse_param(text: str) -> tuple[str, object]:
    """``key=value`` → (key, value); the value is read as JSON when it can be (numbers, true/false), else text."""
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not of the form key=value", param_hint="--param")
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        lowered = raw.lower()
        value = {"true": True, "false": False, "yes": True, "no": False}.get(lowered, raw)
    return key, value


def parse_zval(values) -> dict[str, float]:
    """``--zval`` values, each ``El=Z`` or a comma-separated list ``Na=7,Cl=7`` (the engine's syntax)."""
    zval: dict[str, float] = {}
    for value in values:
        for entry in filter(None, (item.strip() for item in value.split(","))):
            if "=" not in entry:
                raise click.BadParameter(f"{entry!r}: expected El=Z pairs such as 'Na=7,Cl=7'", param_hint="--zval")
            element, number = (part.strip() for part in entry.split("=", 1))
            try:
                zval[element] = float(number)
            except ValueError:
                raise click.BadParameter(f"{entry!r}: {number!r} is not a number", param_hint="--zval") from None
            if zval[element].is_integer():
                zval[element] = int(zval[element])
    return zval


def parse_walltime(text: str | None) -> int | None:
    """Seconds from ``3600``, ``90m``, ``2h``, ``1d``, ``1:30:00`` or ``2-00:00:00`` (SLURM's day form)."""
    if text is None:
        return None
    value = text.strip().lower()
    try:
        days = 0
        if "-" in value:
            day_text, value = value.split("-", 1)
            days = int(day_text)
        if ":" in value:
            parts = [int(x) for x in value.split(":")]
            if len(parts) > 3:
                raise ValueError
            seconds = 0
            for part in parts:
                seconds = seconds * 60 + part
            if len(parts) == 2:  # H:MM
                seconds *= 60
        elif value[-1:] in "smhd" and value[:-1]:
            seconds = float(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        else:
            seconds = float(value)
        seconds = int(round(seconds + 86400 * days))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a wall time (3600, 90m, 2h, 1:30:00, 2-00:00:00)",
                                 param_hint="--walltime") from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r}: the wall time must be positive", param_hint="--walltime")
    return seconds
