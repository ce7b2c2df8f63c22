"""A folder of run dirs as one committed artifact: ``<name>.tar.xz`` plus its manifest ``<name>.sha256``.

The archive holds every regular file of a folder ``<dir>/<folder>/`` under ``<folder>/`` (so ``tar -xJf
<name>.tar.xz -C <dir>`` gives the folder back), in path order, with a fixed mtime, owner and mode: packing the same files twice gives
the same bytes. The manifest is ``sha256sum`` text: one line ``<hex>  <member path>`` per member, path-sorted,
then ``<hex>  <name>.tar.xz`` for the archive itself.

An archive stands for the folder it holds beside it: a run it holds is named
``<archive's dir>/<folder>/<run>`` (``stands_for``), whatever the archive's own name (so the committed
``experiments/results/crn24_cpu.tar.xz`` stands for ``experiments/results/crn24_cpu/``).

``open_archive`` extracts into a cache folder keyed by the archive's hash and checks every member against the
manifest first; a missing manifest, a member whose hash differs, a member missing or extra, or an archive whose
own hash differs raise UsageError naming the archive (and the member).
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from moda_lab.errors import UsageError

SUFFIX = ".tar.xz"
MTIME = 0  # 1970-01-01: no member carries the time it was packed
XZ_PRESET = 6
MANIFEST_COPY = ".manifest"  # the manifest an extraction was checked against, beside <name>/
CACHE_ENV = "MODA_LAB_ARCHIVE_CACHE"  # where open_archive extracts (default: <tmp>/moda_lab_archives)


def is_archive(path: str | Path) -> bool:
    """True for a path named ``*.tar.xz`` (existing or not)."""
    return str(path).endswith(SUFFIX)


def archive_name(archive: str | Path) -> str:
    """``<name>`` of ``<name>.tar.xz``."""
    return Path(archive).name[: -len(SUFFIX)]


def manifest_path(archive: str | Path) -> Path:
    """``<name>.sha256`` beside ``<name>.tar.xz``."""
    archive = Path(archive)
    return archive.with_name(archive_name(archive) + ".sha256")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, path-sorted; a symlink or special file is refused."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UsageError(f"{path}: not a regular file; allowed in an archive: regular files and folders")
        if path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def tar_bytes(folder: Path, name: str) -> tuple[bytes, dict[str, str]]:
    """The uncompressed tar of ``folder``'s files under ``name/`` and each member's sha256."""
    buffer = io.BytesIO()
    hashes: dict[str, str] = {}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in folder_files(folder):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{name}/{path.relative_to(folder).as_posix()}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            hashes[info.name] = sha256_bytes(data)
    return buffer.getvalue(), hashes


def manifest_text(hashes: dict[str, str], archive_file: str, archive_hash: str) -> str:
    lines = [f"{hashes[member]}  {member}" for member in sorted(hashes)]
    return "\n".join([*lines, f"{archive_hash}  {archive_file}"]) + "\n"


def pack(folder: str | Path, archive: str | Path) -> Path:
    """Write ``archive`` (``<name>.tar.xz``) from ``folder``'s files and its manifest; returns the archive path."""
    folder, archive = Path(folder), Path(archive)
    if not is_archive(archive):
        raise UsageError(f"{archive}: an archive's name must end in {SUFFIX}")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder; allowed: a folder of run dirs")
    raw, hashes = tar_bytes(folder, folder.resolve().name)
    if not hashes:
        raise UsageError(f"{folder}: no files to pack")
    data = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(data)
    manifest_path(archive).write_text(manifest_text(hashes, archive.name, sha256_bytes(data)), encoding="utf-8")
    return archive


def read_manifest(archive: Path) -> tuple[dict[str, str], str]:
    """The manifest's member hashes and the archive's own hash."""
    manifest = manifest_path(archive)
    if not manifest.is_file():
        raise UsageError(f"{archive}: no manifest {manifest.name} beside it; allowed: an archive written by pack")
    members: dict[str, str] = {}
    archive_hash = None
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64:
            raise UsageError(f"{manifest}: line {lineno} is not '<sha256>  <path>'")
        if path == archive.name:
            archive_hash = digest
        else:
            members[path] = digest
    if archive_hash is None:
        raise UsageError(f"{manifest}: no line for {archive.name}")
    return members, archive_hash


def verify_members(archive: Path, data: bytes, members: dict[str, str], dest: Path) -> None:
    """Extract ``data`` (the archive's bytes) into ``dest``, checking each member against the manifest."""
    seen = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
        for info in tar:
            if not info.isfile():
                raise UsageError(f"{archive}: member {info.name!r} is not a regular file")
            expected = members.get(info.name)
            if expected is None:
                raise UsageError(f"{archive}: member {info.name!r} is not in {manifest_path(archive).name}")
            blob = tar.extractfile(info).read()
            if sha256_bytes(blob) != expected:
                raise UsageError(
                    f"{archive}: member {info.name!r} does not match its sha256 in {manifest_path(archive).name}; "
                    "allowed: the archive as packed (restore it, or pack the folder again)"
                )
            tar.extract(info, dest, filter="data")
            seen.add(info.name)
    missing = sorted(set(members) - seen)
    if missing:
        raise UsageError(f"{archive}: member {missing[0]!r} of the manifest is missing ({len(missing)} missing)")


# Where each archive opened in this process was extracted, by the folder it stands for: a run is named by its
# stands-for path (tidy.csv's ``path``), and what is read after loading (eval/last/attention.csv) comes from here.
EXTRACTED: dict[Path, Path] = {}


def files_dir(path: str | Path) -> Path:
    """The dir a run's files are read from: ``path``, or for a run of an archive opened here, its extraction."""
    path = Path(path)
    for folder, extracted in EXTRACTED.items():
        if path == folder or folder in path.parents:
            return extracted / path.relative_to(folder)
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "moda_lab_archives")


def open_archive(archive: str | Path) -> Path:
    """The folder of run dirs ``archive`` holds, extracted (once per archive content) after checking every member
    and the archive against its manifest; UsageError naming the archive and the member on any mismatch."""
    archive = Path(archive)
    if not archive.is_file():
        raise UsageError(f"{archive}: no such archive; allowed: a <name>{SUFFIX} written by pack")
    members, archive_hash = read_manifest(archive)
    data = archive.read_bytes()
    manifest = manifest_path(archive).read_text(encoding="utf-8")
    target = cache_root() / sha256_bytes(data)[:16]
    copy = target / MANIFEST_COPY
    if copy.is_file() and copy.read_text(encoding="utf-8") == manifest:
        return remember(archive, top_folder(archive, target))  # extracted and checked against this manifest before
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        try:
            verify_members(archive, data, members, staging)
        except (tarfile.TarError, lzma.LZMAError, EOFError) as err:
            raise UsageError(f"{archive}: not a readable {SUFFIX} archive ({err})") from None
        if sha256_bytes(data) != archive_hash:
            raise UsageError(f"{archive}: the archive does not match its sha256 in {manifest_path(archive).name}")
        top_folder(archive, staging)
        (staging / MANIFEST_COPY).write_text(manifest, encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # an earlier extraction checked against another manifest
        try:
            staging.rename(target)
        except OSError:  # another process extracted the same archive meanwhile
            if not copy.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return remember(archive, top_folder(archive, target))


def remember(archive: Path, folder: Path) -> Path:
    EXTRACTED[stands_for(archive, folder)] = folder
    return folder


def top_folder(archive: Path, extracted: Path) -> Path:
    """The one folder an archive holds (its members all live under it)."""
    tops = [p for p in extracted.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise UsageError(f"{archive}: holds {len(tops)} top-level folders; allowed: one (the folder packed)")
    return tops[0]


def stands_for(archive: str | Path, folder: Path) -> Path:
    """The folder an archive stands for: its top-level folder, beside the archive."""
    return Path(archive).parent / folder.name
