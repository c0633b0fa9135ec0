"""Bytes → a table of strings: which kind of file it is (by name AND content), its encoding and
delimiter, the header row, blank rows and trailing empty columns dropped, and the row numbers a
person sees when they open the file (header = row 1).

The guards run before any parser touches the content: the row limit is a read limit (pandas stops
there), and a zipped workbook (XLSX, ODS) has its central directory checked for declared sizes and
compression ratios, then every entry inflated in bounded chunks to prove the directory honest,
before calamine opens it. Nothing here ever uses the uploaded file name as a path: only its
extension is read, as a hint that the content has the final word on.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any, Literal

from whatsched.imports.refusal import ImportRefused, too_large, unreadable, unsupported

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

Kind = Literal["csv", "xlsx", "xls", "ods"]

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
TEXT_SUFFIXES = frozenset({"", ".csv", ".txt", ".tsv", ".tab"})
SHEET_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".ods"})
DELIMITERS = (",", ";", "\t", "|")
ODS_MIMETYPE = b"application/vnd.oasis.opendocument.spreadsheet"

# Zip-bomb bounds: a contacts workbook within the upload limit never comes near them.
MAX_UNPACKED_BYTES = 128 * 1024 * 1024
MAX_RATIO = 200
RATIO_MIN_SIZE = 1024 * 1024  # small entries may compress as well as they like
MAX_ENTRIES = 10_000
_INFLATE_IN = 64 * 1024
_INFLATE_OUT = 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")

# A contacts table never needs more; a line of a million separators must not become a million columns.
MAX_COLUMNS = 1_000
MAX_CELLS = 4_000_000  # of a sheet, from A1 to its last used cell (each becomes a Python object)
# Blank rows are read (and dropped) beyond the row limit up to this many before a file counts as too long.
BLANK_ROW_SLACK = 10_000
_LINE_END = re.compile(r"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x01-\x08\x0e-\x1f]")


@dataclass
class Table:
    """Data rows only, every cell a stripped str; `headers` is the whole header row ("" where a
    column has no name)."""

    kind: Kind
    headers: list[str]
    frame: pd.DataFrame  # only the selected columns, labelled by their position among `headers`
    rows: npt.NDArray[np.int64]  # 1-based row number of each data row, as shown by a spreadsheet
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None


def suffix_of(filename: str | None) -> str:
    """The extension of an uploaded name, lowercased; the name itself is never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    stem, dot, ext = name.rpartition(".")
    return "." + ext.lower() if dot and stem and ext.isalnum() else ""


Select = Callable[[list[str]], Sequence[int]]


def _all_columns(headers: list[str]) -> Sequence[int]:
    return range(len(headers))


def preload() -> None:
    """Load pandas (and numpy) now: the API does at startup, so its first import does not wait
    ~0.3 s for them. Other processes (the CLI, the dispatcher) load them when they read a file."""
    import pandas  # noqa: F401


def read_table(
    data: bytes,
    filename: str | None = None,
    *,
    sheet: str | None = None,
    max_rows: int = 200_000,
    max_unpacked: int = MAX_UNPACKED_BYTES,
    select: Select = _all_columns,
) -> Table:
    """Read an uploaded CSV/TXT/XLSX/XLS/ODS; raises ImportRefused with the reason when it cannot.

    `select` sees the header row and names the columns to keep: only those are read into memory
    (a file of a hundred columns costs what its phone, name and email columns cost)."""
    if not data:
        raise unreadable("The file is empty.")
    suffix = suffix_of(filename)
    if data[:4] in ZIP_MAGICS:
        archive = check_zip(data, max_unpacked)
        return _read_workbook(data, _zip_kind(archive, suffix), sheet, max_rows, select)
    if data.startswith(OLE_MAGIC):
        return _read_workbook(data, "xls", sheet, max_rows, select)
    if suffix in SHEET_SUFFIXES:
        raise unreadable(f"The file is named {suffix} but its content is not a spreadsheet.")
    if suffix not in TEXT_SUFFIXES:
        raise unsupported(f"Files of type {suffix} cannot be imported; use CSV, TXT, XLSX, XLS or ODS.")
    text, encoding = decode(data)
    delimiter = sniff_delimiter(text)
    text, skipped = _skip_blank_start(text)
    header_line = _LINE_END.split(text[:200_000], maxsplit=1)[0]
    if _count_outside_quotes(header_line, delimiter) >= MAX_COLUMNS:
        raise _too_many_columns()
    try:
        headers = [h.strip() for h in next(csv.reader([header_line], delimiter=delimiter), [])]
    except csv.Error as exc:
        raise unreadable(f"The header row could not be read: {exc}") from None
    columns = sorted(set(select(headers)))
    raw = _read_csv(text, delimiter, max_rows, columns)
    frame, rows = _data_rows(_stripped(raw), 0, max_rows)
    return Table("csv", headers, frame, rows + skipped, encoding=encoding, delimiter=delimiter)


# ---------------------------------------------------------------------------------------------
# Text: encoding and delimiter
# ---------------------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)


def decode(data: bytes) -> tuple[str, str]:
    """The text and the codec it was read with: a BOM decides; else UTF-16 by its NULs, UTF-8,
    Windows-1252, and Latin-1 (which accepts any byte)."""
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                raise unreadable(f"The file starts with a {label} byte-order mark but is not valid {label}.") from None
            return _checked_text(text), codec
    head = data[:4096]
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        # Mostly-ASCII UTF-16 without a BOM: every other byte is NUL, always on the same side.
        codec = "utf-16-le" if odd * 3 >= len(head) // 2 and even == 0 else ""
        codec = codec or ("utf-16-be" if even * 3 >= len(head) // 2 and odd == 0 else "")
        if not codec:
            raise unreadable("The file does not look like text or a spreadsheet.")
        try:
            return _checked_text(data.decode(codec)), codec
        except UnicodeDecodeError:
            raise unreadable("The file does not look like text or a spreadsheet.") from None
    for codec in ("utf-8", "cp1252"):
        try:
            return _checked_text(data.decode(codec)), codec
        except UnicodeDecodeError:
            continue
    return _checked_text(data.decode("latin-1")), "latin-1"


def _checked_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and a file full of control characters is binary in disguise.
    sample = text[:65536]
    if "\x00" in text or len(_CONTROL.findall(sample)) * 100 > len(sample):
        raise unreadable("The file does not look like text or a spreadsheet.")
    return text


def _skip_blank_start(text: str) -> tuple[str, int]:
    """Blank lines above the header (pandas would take the first one as a table with no columns)."""
    skipped, position = 0, 0
    while True:
        end = text.find("\n", position)
        if end == -1 or text[position:end].strip():
            return text[position:], skipped
        skipped, position = skipped + 1, end + 1


def _count_outside_quotes(line: str, delimiter: str) -> int:
    if '"' not in line:
        return line.count(delimiter)
    count, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def sniff_delimiter(text: str) -> str:
    """Among , ; tab |: the one the header row uses that the data rows agree with best."""
    lines = [line for line in text[:65536].splitlines() if line.strip()][:50]
    if not lines:
        raise unreadable("The file has no rows.")
    header, body = lines[0], lines[1:] or lines[:1]
    best: tuple[float, float, int] = (-1.0, -1.0, 0)
    chosen = ","
    for delimiter in DELIMITERS:
        n = _count_outside_quotes(header, delimiter)
        if n == 0:
            continue
        counts = [_count_outside_quotes(line, delimiter) for line in body]
        score = (sum(c == n for c in counts) / len(counts), sum(c > 0 for c in counts) / len(counts), n)
        if score > best:
            best, chosen = score, delimiter
    return chosen


def _read_csv(text: str, delimiter: str, max_rows: int, columns: list[int]) -> pd.DataFrame:
    """Row 0 is the header. Only `columns` are kept; longer lines lose their unnamed extra fields."""
    import pandas as pd

    try:
        return pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            header=None,
            usecols=columns,
            dtype=object,
            na_filter=False,
            keep_default_na=False,
            skip_blank_lines=False,  # keep blank lines so row numbers stay the file's
            nrows=max_rows + 2 + BLANK_ROW_SLACK,
            quotechar='"',
            engine="c",
        )
    except (ValueError, UnicodeError) as exc:  # pandas' ParserError is a ValueError
        raise unreadable(f"The file could not be read as a table: {_first_line(exc)}") from None


def _too_many_columns() -> ImportRefused:
    return unreadable(f"The file has more than {MAX_COLUMNS:,} columns; a contacts table needs a few.")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Workbooks
# ---------------------------------------------------------------------------------------------

_KIND_LABEL = {"xlsx": "Excel (XLSX)", "xls": "Excel 97-2003 (XLS)", "ods": "OpenDocument (ODS)", "csv": "CSV"}


def _zip_kind(archive: zipfile.ZipFile, suffix: str) -> Kind:
    names = set(archive.namelist())
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "mimetype" in names and archive.read("mimetype").strip() == ODS_MIMETYPE:
        return "ods"
    if "content.xml" in names and suffix == ".ods":
        return "ods"
    raise unsupported("The file is a ZIP archive but not an XLSX or ODS spreadsheet.")


def _read_workbook(data: bytes, kind: Kind, sheet: str | None, max_rows: int, select: Select) -> Table:
    import numpy as np
    import pandas as pd

    label = _KIND_LABEL[kind]
    try:
        book = pd.ExcelFile(io.BytesIO(data), engine="calamine")
        names = [str(n) for n in book.sheet_names]
    except Exception as exc:  # calamine's errors are untyped; any failure means a damaged file
        raise unreadable(f"The {label} workbook could not be opened: {_first_line(exc)}") from None
    target = pick_sheet(names, sheet)
    _check_sheet_size(book, target, max_rows)
    try:
        raw = pd.read_excel(
            book,
            sheet_name=target,
            header=None,
            dtype=object,
            na_filter=False,
            nrows=max_rows + 2 + BLANK_ROW_SLACK,
        )
    except Exception as exc:
        raise unreadable(f"The sheet {target!r} could not be read: {_first_line(exc)}") from None
    if raw.shape[1] > MAX_COLUMNS:
        raise _too_many_columns()
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise unreadable("The sheet has no rows.")
    # The header is the first row with anything in it (a sheet may start lower than row 1).
    first = raw.head(BLANK_ROW_SLACK).apply(lambda column: column.map(cell_text).str.strip())
    nonblank = np.flatnonzero((first != "").to_numpy().any(axis=1))
    if len(nonblank) == 0:
        raise unreadable("The sheet has no rows.")
    header_at = int(nonblank[0])
    headers = [str(h) for h in first.iloc[header_at]]
    columns = sorted(set(select(headers)))
    cells = raw.iloc[:, columns].apply(lambda column: column.map(cell_text).str.strip())
    frame, rows = _data_rows(cells, header_at, max_rows)
    return Table(kind, headers, frame, rows, sheet=target)


def _check_sheet_size(book: Any, target: str, max_rows: int) -> None:
    """Every cell from A1 to the last used one becomes a Python object: refuse a sheet too big for
    that before converting it (calamine knows its dimensions once the sheet is parsed)."""
    try:
        end = book.book.get_sheet_by_name(target).end
    except Exception:  # dimensions unknown: the zip-bomb bound still holds
        return
    if end is None:
        return
    rows, columns = int(end[0]) + 1, int(end[1]) + 1
    if columns > MAX_COLUMNS:
        raise _too_many_columns()
    if rows > max_rows + 1 + BLANK_ROW_SLACK:
        raise too_large("too_many_rows", f"The file has more than {max_rows:,} rows; split it into smaller files.")
    if rows * columns > MAX_CELLS:
        raise too_large(
            "file_too_large",
            f"The sheet spans {rows:,} rows by {columns:,} columns; at most {MAX_CELLS:,} cells can be "
            "imported: delete the columns you do not need.",
        )


def pick_sheet(names: list[str], wanted: str | None) -> str:
    if not names:
        raise unreadable("The workbook has no sheets.")
    if wanted is None or not wanted.strip():
        return names[0]
    for name in names:
        if name == wanted:
            return name
    folded = wanted.strip().casefold()
    for name in names:
        if name.strip().casefold() == folded:
            return name
    detail = f"The workbook has no sheet named {wanted!r}; its sheets are: {', '.join(names)}."
    raise ImportRefused(422, "sheet_not_found", detail, [{"field": "sheet", "message": detail}])


def cell_text(value: Any) -> str:
    """A spreadsheet cell as the text a person sees: 56912345678.0 is 56912345678."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        return str(int(value)) if value.is_integer() and abs(value) < 1e18 else repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------------------------
# Zip bombs
# ---------------------------------------------------------------------------------------------


def _bomb(detail: str) -> ImportRefused:
    return too_large("zip_bomb", detail)


def check_zip(data: bytes, max_unpacked: int = MAX_UNPACKED_BYTES) -> zipfile.ZipFile:
    """Refuse an archive that would inflate beyond max_unpacked or compresses like a bomb; the
    central directory is read first (no inflating), then each entry is inflated in 1 MB pieces and
    thrown away, so an entry that inflates beyond what the directory declares is caught too."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error):
        raise unreadable("The file looks like a ZIP archive (XLSX/ODS) but it is damaged.") from None
    mb = max_unpacked // (1024 * 1024)
    if len(entries) > MAX_ENTRIES:
        raise _bomb(f"The spreadsheet holds {len(entries)} files; a workbook never needs more than {MAX_ENTRIES}.")
    declared = sum(e.file_size for e in entries)
    if declared > max_unpacked:
        raise _bomb(f"The spreadsheet would decompress to {declared // (1024 * 1024)} MB; the limit is {mb} MB.")
    for entry in entries:
        if entry.file_size > RATIO_MIN_SIZE and entry.file_size > MAX_RATIO * max(entry.compress_size, 1):
            raise _bomb(
                f"The spreadsheet compresses {entry.file_size // max(entry.compress_size, 1)}:1, "
                f"beyond the {MAX_RATIO}:1 a real workbook reaches: it looks like a zip bomb."
            )
    for entry in entries:
        _inflate_within(data, entry)
    return archive


def _inflate_within(data: bytes, entry: zipfile.ZipInfo) -> None:
    try:
        fields = _LOCAL_HEADER.unpack_from(data, entry.header_offset)
    except struct.error:
        raise unreadable("The file looks like a ZIP archive (XLSX/ODS) but it is damaged.") from None
    if fields[0] != b"PK\x03\x04":
        raise unreadable("The file looks like a ZIP archive (XLSX/ODS) but it is damaged.")
    start = entry.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    payload = memoryview(data)[start : start + entry.compress_size]
    if len(payload) != entry.compress_size:
        raise unreadable("The ZIP archive is truncated.")
    if entry.compress_type == zipfile.ZIP_STORED:
        if entry.compress_size != entry.file_size:
            raise unreadable("The file looks like a ZIP archive (XLSX/ODS) but it is damaged.")
        return
    if entry.compress_type != zipfile.ZIP_DEFLATED:
        raise unreadable("The ZIP archive uses a compression method spreadsheets never use.")
    inflater = zlib.decompressobj(-15)
    produced = 0
    try:
        for offset in range(0, len(payload), _INFLATE_IN):
            pending = bytes(payload[offset : offset + _INFLATE_IN])
            while pending:
                produced += len(inflater.decompress(pending, _INFLATE_OUT))
                if produced > entry.file_size:
                    raise _bomb(
                        f"{entry.filename!r} inflates beyond the {entry.file_size} bytes its directory declares: "
                        "the file looks like a zip bomb."
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        produced += len(inflater.flush())
    except zlib.error:
        raise unreadable("The ZIP archive is damaged (its compressed data is invalid).") from None
    if produced > entry.file_size:
        raise _bomb(f"{entry.filename!r} inflates beyond its declared size: the file looks like a zip bomb.")


# ---------------------------------------------------------------------------------------------
# Header, blank rows, empty columns
# ---------------------------------------------------------------------------------------------


def _stripped(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.apply(lambda column: column.astype(object).str.strip())


def _data_rows(cells: pd.DataFrame, header_at: int, max_rows: int) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """The non-blank rows below the header (blank in every kept column counts as blank), with the
    1-based row number of each; columns keep their position in the file as their label."""
    import numpy as np

    filled = (cells != "").to_numpy().any(axis=1)
    positions = np.flatnonzero(filled)
    data_at = positions[positions > header_at]
    if len(data_at) > max_rows or len(cells) > max_rows + 1 + BLANK_ROW_SLACK:
        raise too_large("too_many_rows", f"The file has more than {max_rows:,} rows; split it into smaller files.")
    return cells.iloc[data_at], (data_at + 1).astype(np.int64)
