"""What every reader shares: one-line errors that start with the path, compression found from the magic
bytes, a text stream of the decompressed file, token tests, and the files found beside a density."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import tempfile
from pathlib import Path

from ase.data import atomic_numbers

from .density import DensityError

_MAGIC = ((b"\x1f\x8b", ".gz"), (b"BZh", ".bz2"), (b"\xfd7zXZ\x00", ".xz"))
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, "": open}
# how monty's zopen (used by pymatgen) chooses a decompressor from the file name
_ZOPEN_SUFFIX = {".gz": ".gz", ".bz2": ".bz2", ".xz": ".xz", ".lzma": ".xz"}
#: What reading a (compressed) text stream can raise.
READ_ERRORS = (OSError, EOFError, lzma.LZMAError)


def error(path, problem) -> DensityError:
    """A :class:`~aiida_optddap.engine.io.density.DensityError` whose single-line message starts with ``path``."""
    return DensityError(f"{path}: " + " ".join(str(problem).split()))


def compression(path: Path) -> str:
    """The compression suffix ('.gz', '.bz2', '.xz' or '') found from the file's first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except IsADirectoryError:
        raise error(path, "is a directory, not a density file") from None
    except OSError as exc:
        raise error(path, f"cannot read the file ({exc.strerror or exc})") from None
    return next((suffix for magic, suffix in _MAGIC if head.startswith(magic)), "")


def open_binary(path: Path, compression: str):
    """A binary stream of the (decompressed) file."""
    return _OPENERS[compression](path, "rb")


def open_text(path: Path, compression: str):
    """A text stream of the (decompressed) file; undecodable bytes become U+FFFD."""
    return io.TextIOWrapper(open_binary(path, compression), encoding="utf-8", errors="replace")


def is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_int(token: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", token) is not None


@contextlib.contextmanager
def zopen_path(path: Path, compression: str):
    """A path that pymatgen's zopen (which trusts the extension) decompresses correctly."""
    if _ZOPEN_SUFFIX.get(path.suffix.lower(), "") == compression:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="optddap-") as tmp:
        link = Path(tmp) / f"density{compression}"
        link.symlink_to(path.resolve())
        yield link


def find_beside(path, name: str) -> Path | None:
    """``name`` (plain, .gz, .bz2 or .xz) in the folder of ``path``, or None."""
    folder = Path(path).parent
    for suffix in ("", ".gz", ".bz2", ".xz"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def split_species_label(token: str) -> tuple[str, str | None]:
    """``(element, POTCAR label or None)`` from a species token: ``Na_pv/1a2b`` → ``("Na", "Na_pv")``,
    ``Na/`` → ``("Na", "Na")``, ``Li_sv`` → ``("Li", "Li_sv")``, ``Na`` → ``("Na", None)``.

    Raises ValueError if the token does not start with an element symbol.
    """
    name = token.split("/")[0]
    match = re.match(r"([A-Z][a-z]?)(?![a-z])", name)
    if match is None or match.group(1) not in atomic_numbers or match.group(1) == "X":
        raise ValueError(f"cannot read an element symbol from species {token!r}")
    element = match.group(1)
    label = name if ("/" in token or name != element) else None
    return element, label


def species_tokens(species) -> list[str]:
    """The ``species`` argument of the readers (a string or a sequence) as a list of tokens."""
    return species.split() if isinstance(species, str) else [str(token) for token in species]


def elements_of(path, tokens) -> list[str]:
    """The element of each species token (:func:`split_species_label`); a bad token is a DensityError."""
    try:
        return [split_species_label(token)[0] for token in tokens]
    except ValueError as exc:
        raise error(path, exc) from None


def species_differ(path, given, found) -> DensityError:
    return error(path, f"species given ({' '.join(given)}) differ from the file's ({' '.join(found)})")
