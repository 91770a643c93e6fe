"""Finding what an install names on the server's plugin path, unpacking a plugin wheel, and trusting a directory.

An install request names a plugin directory or a ``.whl`` file *relative to* an entry of the plugin path
(``change_ticket``, ``vendor/acme_gate-1.0.0-py3-none-any.whl``); the server never follows it anywhere else:
an absolute name, a ``..`` or ``.`` part, a control character, or a symbolic link that leads out of the
entry is refused with :class:`~stella.plugins.errors.PluginSourceRefused`.

A wheel holds its manifest at its root or in one top-level directory (the plugin's package); it is unpacked,
member by member, into ``<install dir>/<id>-<version>``: a member with an absolute name, a ``..`` part or a
symbolic link, too many members or too many bytes refuse the whole wheel and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Final

from stella.plugins.errors import ManifestError, PluginNotFound, PluginSourceRefused
from stella.plugins.manifest import MANIFEST_NAMES, MAX_MANIFEST_BYTES, InstalledPlugin, load_plugin, parse_manifest

WHEEL_SUFFIX: Final = ".whl"
"""The file name suffix of a plugin wheel."""
MAX_WHEEL_MEMBERS: Final = 10_000
"""The most files a plugin wheel may hold."""
MAX_WHEEL_BYTES: Final = 256 * 1024 * 1024
"""The most bytes a plugin wheel may unpack to."""


def split_path(path: str) -> list[Path]:
    """The entries of a ``PATH``-like plugin path."""
    return [Path(p) for p in path.split(os.pathsep) if p]


def _check_relative(name: str) -> PurePosixPath:
    if not name or len(name) > 1024 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name) or "\\" in name:
        raise PluginSourceRefused(f"{name!r} is not a plugin name on the plugin path")
    relative = PurePosixPath(name)
    if relative.is_absolute() or name.startswith("~"):
        raise PluginSourceRefused(f"{name!r} is absolute: name a directory or wheel relative to the plugin path")
    if any(part in ("..", ".") for part in name.split("/")):
        raise PluginSourceRefused(f"{name!r} has a '..' or '.' part: the plugin path is never left")
    return relative


def locate_source(roots: Sequence[Path], name: str) -> Path:
    """The directory or wheel ``name`` names inside one of ``roots`` (the first root holding it wins).

    Raises:
        PluginSourceRefused: ``name`` is absolute, has a ``..`` part, or leads out of its root (a symlink).
        PluginNotFound: no root holds it.
    """
    relative = _check_relative(name)
    for root in roots:
        base = root.resolve()
        candidate = base / relative
        if not os.path.lexists(candidate):
            continue
        resolved = candidate.resolve()
        if not resolved.is_relative_to(base):
            raise PluginSourceRefused(f"{name!r} leads out of the plugin path (a symbolic link); refused")
        return resolved
    raise PluginNotFound(f"there is no {name!r} on the server's plugin path")


def is_trusted(directory: Path, roots: Iterable[Path]) -> bool:
    """Whether ``directory`` (resolved) lies inside one of ``roots``: the only plugins a service runs."""
    resolved = directory.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def load_source(roots: Sequence[Path], name: str, install_dir: Path | None) -> InstalledPlugin:
    """The plugin ``name`` names on the plugin path: a plugin directory, or a wheel unpacked into ``install_dir``.

    Raises:
        PluginSourceRefused: see :func:`locate_source`; or a wheel while no install directory is configured.
        PluginNotFound: nothing of that name.
        ManifestError: the directory or wheel holds no valid plugin (nothing is left unpacked).
    """
    source = locate_source(roots, name)
    if source.is_dir():
        return load_plugin(source)
    if source.is_file() and source.suffix == WHEEL_SUFFIX:
        if install_dir is None:
            raise PluginSourceRefused("installing from a wheel needs an install directory, and none is configured")
        return unpack_wheel(source, install_dir)
    raise PluginSourceRefused(f"{name!r} is neither a plugin directory nor a {WHEEL_SUFFIX} file")


def _wheel_manifest(archive: zipfile.ZipFile) -> tuple[PurePosixPath, dict[str, object]]:
    """The folder holding the wheel's manifest (``.`` for its root) and the manifest's content."""
    found = [
        PurePosixPath(info.filename)
        for info in archive.infolist()
        if PurePosixPath(info.filename).name in MANIFEST_NAMES and len(PurePosixPath(info.filename).parts) <= 2
    ]
    if len(found) != 1:
        raise ManifestError(
            f"a plugin wheel holds exactly one {' or '.join(MANIFEST_NAMES)} at its root or in one top-level "
            f"directory; this one holds {len(found)}"
        )
    info = archive.getinfo(str(found[0]))
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the wheel's manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    raw = archive.read(info)
    try:
        data = tomllib.loads(raw.decode()) if found[0].suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"the wheel's manifest cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("a plugin manifest must be an object")
    return found[0].parent, data


def _check_members(archive: zipfile.ZipFile) -> None:
    infos = archive.infolist()
    if len(infos) > MAX_WHEEL_MEMBERS:
        raise PluginSourceRefused(f"the wheel holds more than {MAX_WHEEL_MEMBERS} files")
    if sum(i.file_size for i in infos) > MAX_WHEEL_BYTES:
        raise PluginSourceRefused(f"the wheel unpacks to more than {MAX_WHEEL_BYTES} bytes")
    for info in infos:
        try:
            _check_relative(info.filename.rstrip("/"))
        except PluginSourceRefused:
            raise PluginSourceRefused(f"the wheel member {info.filename!r} would be written outside it") from None
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PluginSourceRefused(f"the wheel member {info.filename!r} is a symbolic link; refused")


def unpack_wheel(wheel: Path, install_dir: Path) -> InstalledPlugin:
    """Unpack a plugin wheel into ``install_dir/<id>-<version>`` and load the plugin from it.

    The wheel is checked whole before anything is written, unpacked into a fresh folder next to its final
    place, loaded (manifest and entrypoint), and only then moved there; on any refusal nothing is left.

    Raises:
        PluginSourceRefused: a member is unsafe, or the wheel is too large; or it is not a zip archive.
        ManifestError: no single valid manifest, or its entrypoint is missing.
    """
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PluginSourceRefused(f"{wheel.name} is not a readable wheel: {exc}") from None
    with archive:
        _check_members(archive)
        folder, data = _wheel_manifest(archive)
        manifest = parse_manifest(data)
        install_dir.mkdir(parents=True, exist_ok=True)
        target = install_dir.resolve() / f"{manifest.id}-{manifest.version}"
        if target.exists():
            # Never replace a directory a service may be running plugins from.
            unpacked = load_plugin(target)
            if unpacked.manifest != manifest:
                raise PluginSourceRefused(f"another {manifest.id} {manifest.version} is unpacked at {target.name}")
            return unpacked
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.id}-", dir=install_dir))
        try:
            for info in archive.infolist():
                destination = staging / info.filename
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
                mode = (info.external_attr >> 16) & 0o755
                destination.chmod(mode or 0o644)
            load_plugin(staging / folder)
            os.replace(staging / folder, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load_plugin(target)
