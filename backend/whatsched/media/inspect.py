"""What a file really is, from its bytes: its type (never from its name or the client), size and
SHA-256, an image's width and height, and an image without its metadata (EXIF: GPS location,
camera, times) unless MEDIA_KEEP_METADATA. The limits and the allow-list are Postgres's
(private.media_problem); this module refuses only what the bytes themselves say: an empty file, a
type that cannot be recognised, and a file whose bytes are another kind of file than its name says
(an executable renamed `.jpg`)."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import filetype
from PIL import Image, ImageOps, UnidentifiedImageError

CHUNK = 1 << 20
ORIENTATION = 0x0112  # the EXIF tag that says how to turn the picture upright
STRIPPED = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


class MediaRefused(Exception):
    """A refusal with the API's stable code, the field at fault and a sentence naming the problem."""

    def __init__(self, code: str, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Inspected:
    path: Path  # the bytes to store and send (the metadata-free copy of an image)
    mime_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None


def kind_of(mime_type: str | None) -> str | None:
    """private.media_kind's rule, for a name's type (None: no type); tests/test_media.py holds the
    two together."""
    if not mime_type:
        return None
    top = mime_type.split("/", 1)[0]
    return top if top in ("image", "video", "audio") else "document"


def digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def inspect(path: Path, original_name: str, keep_metadata: bool = False) -> Inspected:
    """Inspect the file at `path` (named `original_name` by its sender). Images are rewritten
    without metadata into a new file beside it (the caller removes both). Raises MediaRefused."""
    if path.stat().st_size == 0:
        raise MediaRefused("media_empty", "the file is empty")
    guessed = filetype.guess(str(path))
    detected = guessed.mime if guessed is not None else None
    if detected is None:
        raise MediaRefused("media_type_not_allowed", "the file's type could not be recognised from its bytes")
    named = mimetypes.guess_type(original_name, strict=False)[0]
    if named is not None and kind_of(named) != kind_of(detected):
        raise MediaRefused(
            "media_type_mismatch",
            f"the name says {named} but the bytes are {detected}",
        )
    width = height = None
    final = path
    if kind_of(detected) == "image" and detected in STRIPPED:
        final, width, height = _image(path, detected, keep_metadata)
    size, sha256 = digest(final)
    return Inspected(final, detected, size, sha256, width, height)


def _image(path: Path, mime_type: str, keep_metadata: bool) -> tuple[Path, int, int]:
    try:
        with Image.open(path) as img:
            img.load()
            if keep_metadata:
                return path, img.width, img.height
            # The picture as seen, before its EXIF goes (exif_transpose copies even an upright one).
            upright = img.getexif().get(ORIENTATION, 1) == 1
            oriented = img if upright else ImageOps.exif_transpose(img)
            fd, name = tempfile.mkstemp(dir=path.parent, suffix=".clean")
            os.close(fd)
            out = Path(name)
            fmt = STRIPPED[mime_type]
            if fmt == "JPEG" and upright:
                # Its own quantisation tables: no second round of lossy compression, no growth.
                img.save(out, fmt, quality="keep", exif=b"", icc_profile=img.info.get("icc_profile"))
            elif fmt == "JPEG":
                oriented.save(out, fmt, quality=95, exif=b"", icc_profile=img.info.get("icc_profile"))
            else:
                oriented.save(out, fmt, exif=b"", icc_profile=img.info.get("icc_profile"))
            return out, oriented.width, oriented.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaRefused(
            "media_type_mismatch", f"the bytes say {mime_type} but are not a readable image ({exc})"
        ) from None
