"""Receiving a multipart/form-data upload with bounded memory: the body is parsed as it streams in
(python-multipart), the file part is kept in memory up to the byte limit (or written as it arrives
to a file the caller opened: an attachment) and the request is refused the moment it goes beyond,
text fields are capped, and an uploaded file name never becomes a path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from whatsched.imports.refusal import ImportRefused, too_large

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 100
# Room for the text fields and the multipart framing around the file.
BODY_OVERHEAD_BYTES = 1024 * 1024


@dataclass
class Upload:
    filename: str | None
    data: bytes  # empty when the file went to a sink
    fields: dict[str, list[str]] = field(default_factory=dict)
    size: int = 0

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


def describe_limit(limit: int) -> str:
    mb = limit / (1024 * 1024)
    return f"{mb:g} MB" if mb >= 1 else f"{limit:,} bytes"


def file_too_large(limit: int) -> ImportRefused:
    return too_large("file_too_large", f"The file is larger than the {describe_limit(limit)} limit.")


def _bad(detail: str) -> ImportRefused:
    return ImportRefused(400, "malformed_multipart", detail, [{"field": "", "message": detail}])


class _Receiver:
    def __init__(self, max_file_bytes: int, sink: BinaryIO | None = None) -> None:
        self.max_file_bytes = max_file_bytes
        self.sink = sink
        self.size = 0
        self.fields: dict[str, list[str]] = {}
        self.file = bytearray()
        self.filename: str | None = None
        self.files = 0
        self.field_count = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._ignored = False
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file, self._ignored = b"", "", False, False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _bad('A form part has no Content-Disposition "name".')
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            self._is_file = True
            if self._name != FILE_FIELD:
                self._ignored = True  # only `file` carries the table
                return
            self.files += 1
            if self.files > 1:
                raise ImportRefused(
                    422,
                    "validation_error",
                    "Send one file per import.",
                    [{"field": "file", "message": "more than one file"}],
                )
            self.filename = options[b"filename"].decode("utf-8", "replace")
        else:
            self.field_count += 1
            if self.field_count > MAX_FIELDS:
                raise _bad(f"The form has more than {MAX_FIELDS} fields.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._ignored:
            return
        if self._is_file:
            if self.size + (end - start) > self.max_file_bytes:
                raise file_too_large(self.max_file_bytes)
            self.size += end - start
            if self.sink is not None:
                self.sink.write(data[start:end])
            else:
                self.file += data[start:end]
            return
        if len(self._value) + (end - start) > MAX_FIELD_BYTES:
            raise ImportRefused(
                422,
                "validation_error",
                f"The form field {self._name!r} is longer than {MAX_FIELD_BYTES // 1024} KB.",
                [{"field": self._name, "message": "too long"}],
            )
        self._value += data[start:end]

    def on_part_end(self) -> None:
        if not self._is_file:
            self.fields.setdefault(self._name, []).append(self._value.decode("utf-8", "replace"))


async def receive(
    content_type: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    max_file_bytes: int,
    sink: BinaryIO | None = None,
) -> Upload:
    """Parse the body as it arrives; ImportRefused (413 file_too_large) as soon as it is too big.
    With `sink`, the file's bytes are written there as they arrive instead of kept in memory."""
    media, params = parse_options_header(content_type or "")
    if media != b"multipart/form-data":
        raise ImportRefused(
            415,
            "unsupported_media_type",
            "Send the file as multipart/form-data with a field named 'file'.",
            [{"field": "file", "message": "expected multipart/form-data"}],
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("The multipart Content-Type has no boundary.")
    max_body = max_file_bytes + BODY_OVERHEAD_BYTES
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > max_body:
        raise file_too_large(max_file_bytes)  # refused before a byte of the body is read
    receiver = _Receiver(max_file_bytes, sink)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
        },
    )
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body:
                raise file_too_large(max_file_bytes)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise _bad(f"The multipart body is malformed: {exc}") from None
    if receiver.files == 0:
        raise ImportRefused(
            422,
            "validation_error",
            "Attach the file in a form field named 'file'.",
            [{"field": "file", "message": "missing"}],
        )
    return Upload(receiver.filename, bytes(receiver.file), receiver.fields, receiver.size)
