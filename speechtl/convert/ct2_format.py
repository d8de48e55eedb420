"""Reading a CTranslate2 ``model.bin``: its variables as numpy arrays, and de-quantized.

Layout (little endian): u32 version, then the spec name and a u32 revision, u32 variable count,
then per variable a name, u8 rank, u32 dims, u8 dtype, u32 byte count and the raw data, and
finally a u32 alias count and (alias, target) name pairs. Strings are a u16 length (counting a
trailing NUL) followed by UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpeechtlError

MODEL_BIN = "model.bin"
BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3

# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 has no numpy type and is read as uint16.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5


@dataclass
class Ct2Checkpoint:
    """The variables of a CTranslate2 ``model.bin``.

    Attributes:
        path: the file it was read from (for messages).
        spec: the spec name, ``"WhisperSpec"`` for Whisper.
        revision: the spec revision.
        variables: name -> array as stored (aliases resolved; quantized weights still integers,
            bfloat16 already widened to float32).
    """

    path: Path
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    """Bounds-checked reads from a byte buffer; running past the end means the file is truncated."""

    def __init__(self, data: bytes | memoryview, path: Path):
        self.data = data
        self.path = path
        self.pos = 0
        self.what = "the header"

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise SpeechtlError(
                f"{self.path} ends early (byte {len(self.data)}, while reading {self.what}): the file is truncated "
                "or not a CTranslate2 model; download or copy it again."
            )
        out = memoryview(self.data)[self.pos : end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<H")
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise SpeechtlError(
                f"{self.path}: malformed string at byte {self.pos - n}; the file is not a CTranslate2 model."
            )
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_model(parts: Sequence[Path]) -> Ct2Checkpoint:
    """Read a CTranslate2 ``model.bin`` given as one file or as pieces to concatenate in order.

    Raises:
        SpeechtlError: a missing file, a wrong header or version, a truncated file or trailing bytes.
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise SpeechtlError("no model.bin given to read")
    for p in parts:
        if not p.is_file():
            raise SpeechtlError(f"{p} does not exist; a CTranslate2 model folder must contain {MODEL_BIN}.")
    path = parts[0] if len(parts) == 1 else Path(" + ".join(str(p) for p in parts))
    data = parts[0].read_bytes() if len(parts) == 1 else b"".join(p.read_bytes() for p in parts)
    r = _Reader(data, path)

    version = r.unpack("<I")
    if version != BINARY_VERSION:
        raise SpeechtlError(
            f"{path} is not a CTranslate2 binary model of version {BINARY_VERSION} (its header reads {version}); "
            "convert it with ctranslate2 >= 3 or check that the file is a CTranslate2 model.bin."
        )
    r.what = "the spec name"
    spec = r.string()
    revision = r.unpack("<I")
    r.what = "the variable count"
    count = r.unpack("<I")

    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        r.what = f"variable {i + 1} of {count}"
        name = r.string()
        r.what = f"variable {name!r}"
        rank = r.unpack("<B")
        shape = tuple(r.unpack("<I") for _ in range(rank))
        type_id = r.unpack("<B")
        nbytes = r.unpack("<I")
        if type_id not in _CT2_DTYPES:
            raise SpeechtlError(f"{path}: variable {name!r} has unknown dtype id {type_id}; the file is corrupt.")
        dtype = _CT2_DTYPES[type_id]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise SpeechtlError(
                f"{path}: variable {name!r} declares {nbytes} bytes but shape {list(shape)} needs {expected}; "
                "the file is corrupt."
            )
        arr = np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape)
        if type_id == _BF16:
            # bfloat16 is the top half of a float32.
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr

    r.what = "the alias table"
    aliases = {}
    for _ in range(r.unpack("<I")):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(data):
        raise SpeechtlError(
            f"{path} has {len(data) - r.pos} unexpected bytes after the alias table; the file is corrupt "
            "(or pieces were concatenated in the wrong order)."
        )
    for alias, target in aliases.items():
        seen = {alias}
        while target in aliases and target not in seen:
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise SpeechtlError(f"{path}: alias {alias!r} points to missing variable {target!r}; the file is corrupt.")
        variables[alias] = variables[target]
        # An alias of a quantized weight shares its scale (e.g. the output projection of an int8 model).
        for suffix in ("_scale", "_zero"):
            if target + suffix in variables:
                variables.setdefault(alias + suffix, variables[target + suffix])
    return Ct2Checkpoint(path=path, spec=spec, revision=revision, variables=variables)


def dequantized(ckpt: Ct2Checkpoint) -> dict[str, np.ndarray]:
    """All floating variables as float32; int8/int16 weights divided by their ``*_scale``.

    CTranslate2 quantizes a weight ``w`` as ``round(w * scale)``: int8 with one scale per output
    row (conv kernels flattened per output channel), int16 with one scalar scale.
    """
    out: dict[str, np.ndarray] = {}
    v = ckpt.variables
    for name, arr in v.items():
        if name.endswith("_scale") or name.endswith("_zero"):
            continue
        if name + "_zero" in v:
            raise SpeechtlError(
                f"{ckpt.path}: {name!r} uses zero-point (AWQ-style) quantization, which this converter does not read; "
                "convert the original model with --quantization float16 or float32 instead."
            )
        scale = v.get(name + "_scale")
        if scale is not None:
            w = arr.astype(np.float32)
            s = np.asarray(scale, dtype=np.float32)
            if s.ndim == 1:
                s = s.reshape((-1,) + (1,) * (w.ndim - 1))
            out[name] = w / s
        elif arr.dtype.kind == "f":
            out[name] = arr.astype(np.float32, copy=False)
        else:
            out[name] = arr
    return out
