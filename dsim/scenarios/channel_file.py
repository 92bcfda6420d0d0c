"""Multicell channel files (``.npz``, DESIGN §5): :func:`save_channels` / :func:`load_channels`.

Keys (B realizations, I UEs, K BSs, N UE antennas, M BS antennas):

=========  ==========================  ==========================================================
key        dtype, shape                meaning
=========  ==========================  ==========================================================
H          complex (B, I, K, N, M)     channel from BS k to UE i (finite)
assign     int (I,)                    serving BS of UE i, in [0, K)
power_w    real (K,)                   BS power budget P_k [W], > 0
noise_w    real (I,)                   noise power sigma_i^2 per receive antenna [W], > 0
weights    real (I,)                   WSR weights alpha_i, > 0
inrange    bool (B, I, K), optional    BS k has CSI of / a link with UE i (default all True; the
                                       serving pair must be True)
family     str (), optional            'multicell' (files without it are multicell)
bs_xy      real (B, K, 2), optional    BS positions [m]
ue_xy      real (B, I, 2), optional    UE positions [m]
=========  ==========================  ==========================================================

"real" means a floating or integer (not bool, not complex) array.  Any other key, a missing key, a wrong
dtype or shape, a NaN / infinite or out-of-range value raises :class:`ChannelFileError`, whose message
names the file, the key, what was expected and what was found.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from dsim.scenarios.multicell import FAMILY, MulticellChannels

REQUIRED = ("H", "assign", "power_w", "noise_w", "weights")
OPTIONAL = ("inrange", "family", "bs_xy", "ue_xy")


class ChannelFileError(ValueError):
    """A channel file is missing, unreadable or malformed; the message names the file and the key."""


def save_channels(path: str | Path, ch: MulticellChannels) -> None:
    """Write ``ch`` to ``path`` (an ``.npz`` with the keys of the module docstring; H keeps its dtype)."""
    arrays = {
        "family": np.array(FAMILY), "H": ch.H.detach().cpu().numpy(),
        "assign": ch.assign.cpu().numpy().astype(np.int64),
        "power_w": ch.power_w.cpu().numpy(), "noise_w": ch.noise_w.cpu().numpy(),
        "weights": ch.weights.cpu().numpy(), "inrange": ch.inrange.cpu().numpy().astype(bool),
    }
    for key in ("bs_xy", "ue_xy"):
        t = getattr(ch, key)
        if t is not None:
            arrays[key] = t.cpu().numpy()
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append '.npz' to the name
        np.savez(f, **arrays)


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ChannelFileError(f"{path}: no such channel file")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ChannelFileError(f"{path}: not a readable .npz channel file ({exc})") from exc
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


def _found(a: np.ndarray) -> str:
    return f"{a.dtype} array of shape {tuple(a.shape)}"


def _is_real(a: np.ndarray) -> bool:
    return a.dtype.kind in "fiu"


def _check_array(path: Path, key: str, a: np.ndarray, kinds: str, what: str, shape: tuple[int, ...],
                 shape_txt: str) -> None:
    if a.dtype.kind not in kinds or tuple(a.shape) != shape:
        raise ChannelFileError(f"{path}: key {key!r}: expected {what} of shape {shape_txt} = {shape}, "
                               f"found {_found(a)}")
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ChannelFileError(f"{path}: key {key!r}: expected finite values, found "
                               f"{int((~np.isfinite(a)).sum())} NaN/infinite entries")


def load_channels(path: str | Path, dtype: torch.dtype = torch.complex128) -> MulticellChannels:
    """Read a multicell channel file (module docstring) -> :class:`MulticellChannels` with H in ``dtype``.

    Raises :class:`ChannelFileError` (a ValueError) naming the file and the key for any defect."""
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    path = Path(path)
    data = _read(path)
    allowed = REQUIRED + OPTIONAL
    for key in data:
        if key not in allowed:
            raise ChannelFileError(f"{path}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    for key in REQUIRED:
        if key not in data:
            raise ChannelFileError(f"{path}: missing key {key!r}; required keys: {', '.join(REQUIRED)}, "
                                   f"found: {', '.join(sorted(data)) or 'none'}")
    if "family" in data:
        fam = data["family"]
        if fam.dtype.kind not in "US" or fam.shape != ():
            raise ChannelFileError(f"{path}: key 'family': expected a string scalar, found {_found(fam)}")
        if str(fam) != FAMILY:
            raise ChannelFileError(f"{path}: key 'family': expected {FAMILY!r}, found {str(fam)!r}")
    H = data["H"]
    if H.dtype.kind != "c" or H.ndim != 5 or min(H.shape, default=0) < 1:
        raise ChannelFileError(f"{path}: key 'H': expected a complex array of shape (B, I, K, N, M) with "
                               f"all sizes >= 1, found {_found(H)}")
    B, I, K = H.shape[:3]
    _check_array(path, "H", H, "c", "a complex array", H.shape, "(B, I, K, N, M)")
    assign = data["assign"]
    _check_array(path, "assign", assign, "iu", "an integer array", (I,), "(I,)")
    if (int(assign.min()) < 0 or int(assign.max()) >= K):
        bad = assign[(assign < 0) | (assign >= K)]
        raise ChannelFileError(f"{path}: key 'assign': expected serving BS indices in [0, {K}), "
                               f"found {bad.tolist()[:8]}")
    for key, shape, shape_txt, unit in (("power_w", (K,), "(K,)", " W"), ("noise_w", (I,), "(I,)", " W"),
                                        ("weights", (I,), "(I,)", "")):
        a = data[key]
        _check_array(path, key, a, "fiu", "a real array", shape, shape_txt)
        if not (a > 0).all():
            raise ChannelFileError(f"{path}: key {key!r}: expected values > 0{unit}, "
                                   f"found {a[a <= 0].tolist()[:8]}")
    for key, shape, shape_txt in (("bs_xy", (B, K, 2), "(B, K, 2)"), ("ue_xy", (B, I, 2), "(B, I, 2)")):
        if key in data:
            _check_array(path, key, data[key], "fiu", "a real array [m]", shape, shape_txt)
    assign_t = torch.as_tensor(assign.astype(np.int64))
    if "inrange" in data:
        _check_array(path, "inrange", data["inrange"], "b", "a bool array", (B, I, K), "(B, I, K)")
        inrange = torch.as_tensor(data["inrange"])
        serving_ok = inrange[:, torch.arange(I), assign_t]  # (B, I)
        if not bool(serving_ok.all()):
            b, i = (int(v) for v in torch.nonzero(~serving_ok)[0])
            raise ChannelFileError(f"{path}: key 'inrange': expected True for every UE's serving BS, found "
                                   f"False at realization {b}, UE {i}, BS {int(assign_t[i])}")
    else:
        inrange = torch.ones(B, I, K, dtype=torch.bool)

    def real(key: str) -> torch.Tensor | None:
        return torch.as_tensor(data[key]).to(torch.float64) if key in data else None

    return MulticellChannels(H=torch.as_tensor(H).to(dtype), assign=assign_t, power_w=real("power_w"),
                             noise_w=real("noise_w"), weights=real("weights"), inrange=inrange,
                             bs_xy=real("bs_xy"), ue_xy=real("ue_xy"))
