"""Channel files (``.npz``, DESIGN §5): the reading, writing and checking every family's file I/O shares.

A family documents its keys in its own module and implements ``save(path, channels)`` /
``load(path, dtype)`` with these helpers.  Every defect raises :class:`ChannelFileError`, whose message
names the file, the key, what was expected and what was found.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class ChannelFileError(ValueError):
    """A channel file is missing, unreadable or malformed; the message names the file and the key."""


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to ``path`` as an ``.npz`` archive (exactly that name: no '.npz' appended)."""
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append '.npz' to the name
        np.savez(f, **arrays)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive at ``path`` (no pickles)."""
    if not path.is_file():
        raise ChannelFileError(f"{path}: no such channel file")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        why = "neither an .npz archive nor an .npy array" if "pickle" in str(exc) else str(exc) or type(exc).__name__
        raise ChannelFileError(f"{path}: not a readable .npz channel file ({why})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ChannelFileError(f"{path}: expected an .npz archive of named arrays, found a single .npy array")
    with z:
        data: dict[str, np.ndarray] = {}
        for key in z.files:
            try:
                data[key] = z[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ChannelFileError(f"{path}: key {key!r} is unreadable ({exc})") from exc
    return data


def found(a: np.ndarray) -> str:
    """'<dtype> array of shape (...)', for error messages."""
    return f"{a.dtype} array of shape {tuple(a.shape)}"


def check_array(path: Path, key: str, a: np.ndarray, kinds: str, what: str, shape: tuple[int, ...],
                shape_txt: str) -> None:
    """``a`` has a dtype kind in ``kinds`` (numpy kind letters), the shape ``shape`` and finite values."""
    if a.dtype.kind not in kinds or tuple(a.shape) != shape:
        raise ChannelFileError(f"{path}: key {key!r}: expected {what} of shape {shape_txt} = {shape}, "
                               f"found {found(a)}")
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ChannelFileError(f"{path}: key {key!r}: expected finite values, found "
                               f"{int((~np.isfinite(a)).sum())} NaN/infinite entries")


def check_family(path: Path, data: dict[str, np.ndarray], family: str) -> None:
    """The file's ``family`` key, when present, is the string scalar ``family``."""
    if "family" not in data:
        return
    fam = data["family"]
    if fam.dtype.kind not in "US" or fam.shape != ():
        raise ChannelFileError(f"{path}: key 'family': expected a string scalar, found {found(fam)}")
    if str(fam) != family:
        raise ChannelFileError(f"{path}: key 'family': expected {family!r}, found {str(fam)!r}")


def read_family_file(path: Path, family: str, required: tuple[str, ...],
                     optional: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of channel file ``path`` of ``family``: readable, no key outside ``required + optional``,
    every ``required`` key present, and its ``family`` key (when present) is ``family``; otherwise a
    :class:`ChannelFileError` naming the file and the key."""
    data = read_npz(path)
    allowed = required + optional
    for key in data:
        if key not in allowed:
            raise ChannelFileError(f"{path}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in data:
            raise ChannelFileError(f"{path}: missing key {key!r}; required keys: {', '.join(required)}, "
                                   f"found: {', '.join(sorted(data)) or 'none'}")
    check_family(path, data, family)
    return data
