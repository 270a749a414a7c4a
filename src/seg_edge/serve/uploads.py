"""Receive a case upload: a multipart form streamed into a private folder, size-limited while it streams.

Files go straight from the socket to ``<job>/inputs/<field>/<client's file name>``; a file past the
limit stops the upload at that chunk (413), before the rest of the body is read. Every defect is
a ``RequestError`` carrying its HTTP status and one line; the caller removes the job's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from seg_edge.card import MODALITIES
from seg_edge.errors import InputError

FILE_FIELDS = (*MODALITIES, "stack")
TEXT_FIELDS = ("modalities", "label_scheme", "overlap", "probabilities")
TEXT_LIMIT = 1024
SUFFIXES = {"stack": (".nii.gz", ".nii", ".npy")}
NIFTI = (".nii.gz", ".nii")
FORM_HINT = "files in fields flair, t1, t1ce, t2, or one 4D NIfTI/.npy in field stack with a modalities field"


class RequestError(InputError):
    """An upload that cannot be taken: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def safe_name(name: str) -> str:
    """The client's file name without folders, reduced to characters that are safe on any file system."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".")
    if len(base) > 120:
        base = base[-120:].lstrip(".")
    return base or "upload"


@dataclass
class Form:
    """What a case upload held: stored files (field → path), the clients' names, and text fields."""

    files: dict[str, Path] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


class FormReceiver:
    """Feeds body chunks to python-multipart's streaming parser; files are written as they arrive."""

    def __init__(self, folder: Path, boundary: bytes, limit_bytes: int):
        self.folder, self.limit = folder, limit_bytes
        self.form = Form()
        self._headers: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self._part: tuple[str, str | None] | None = None
        self._sink: BinaryIO | None = None
        self._text = bytearray()
        self.complete = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._part_end, "on_end": self._end})

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            self.close()
            raise RequestError(f"request body is not a valid multipart form ({exc}); expected {FORM_HINT}", 400) \
                from None
        except BaseException:
            self.close()
            raise

    def finish(self) -> Form:
        try:
            self.parser.finalize()
        finally:
            self.close()
        if not self.complete:
            raise RequestError("request body ended before the multipart form was complete "
                               "(the upload was cut off)", 400)
        return self.form

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._part = (name, None if filename is None else filename.decode("utf-8", "replace"))
        self._open(name, self._part[1])

    def _open(self, name: str, filename: str | None) -> None:
        if name in self.form.files or name in self.form.text:
            raise RequestError(f"field {name!r} given twice (expected each field once)", 422)
        if filename is None:
            if name in FILE_FIELDS:
                raise RequestError(f"field {name!r} holds text (expected a file upload)", 422)
            if name not in TEXT_FIELDS:
                raise RequestError(f"unknown field {name!r} (expected {FORM_HINT}; options "
                                   f"{', '.join(TEXT_FIELDS)})", 422)
            self._text = bytearray()
            return
        if name not in FILE_FIELDS:
            raise RequestError(f"unknown file field {name!r} (expected {FORM_HINT})", 422)
        client = safe_name(filename)
        allowed = SUFFIXES.get(name, NIFTI)
        if not client.lower().endswith(allowed):
            raise RequestError(f"{client}: field {name} takes a {' or '.join(allowed)} file "
                               f"(the name tells the format)", 415)
        target = self.folder / name / client
        target.parent.mkdir(mode=0o700)
        self._sink = open(target, "xb")
        self.form.files[name], self.form.names[name], self.form.sizes[name] = target, client, 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        name, filename = self._part or ("", None)
        size = end - start
        if filename is None:
            self._text += data[start:end]
            if len(self._text) > TEXT_LIMIT:
                raise RequestError(f"field {name!r} is longer than {TEXT_LIMIT} bytes (expected a short value)", 413)
            return
        self.form.sizes[name] += size
        if self.form.sizes[name] > self.limit:
            raise RequestError(f"{self.form.names[name]}: upload exceeds the limit of {self.limit / 2**20:g} MB "
                               "per file (the server's --max-upload-mb)", 413)
        if self._sink is not None:
            self._sink.write(data[start:end])

    def _part_end(self) -> None:
        name, filename = self._part or ("", None)
        if filename is None:
            try:
                self.form.text[name] = bytes(self._text).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise RequestError(f"field {name!r} is not UTF-8 text", 422) from None
        self.close()
        self._part = None

    def _end(self) -> None:
        self.complete = True


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header; RequestError (415) for any other body."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        shown = content_type or "no Content-Type"
        raise RequestError(f"request body is {shown} (expected multipart/form-data: {FORM_HINT})", 415)
    return boundary


@dataclass(frozen=True)
class Submission:
    """A received case: where its files are, how to read them, and the job's options."""

    case_id: str
    source: dict[str, Path] | Path
    file_order: tuple[str, ...] | None
    names: dict[str, str]  # stored path → the client's file name (messages name the client's file)
    label_scheme: str | None = None
    overlap: float | None = None
    probabilities: bool = False

    def public(self, text: str) -> str:
        """``text`` with the stored paths replaced by the clients' file names (no server paths leak)."""
        for path, name in sorted(self.names.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, name)
        return text


def _flag(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise RequestError(f"{name} '{value}' (expected true or false)")
    return lowered in ("true", "1", "yes", "on")


def _overlap(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number < 1.0:  # also NaN
        raise RequestError(f"overlap '{value}' (expected a number, 0 <= overlap < 1)")
    return number


def _order(value: str) -> tuple[str, ...]:
    names = tuple(v.strip().lower() for v in value.split(","))
    if len(set(names)) != len(names) or any(n not in MODALITIES for n in names):
        raise RequestError(f"modalities '{value}' (expected the stack's volume order, distinct names from "
                           f"{','.join(MODALITIES)})")
    return names


def _case_id(name: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.nii|\.npy)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[_-](flair|t2f)$", "", stem, flags=re.IGNORECASE) or "case"


def submission(form: Form, needed: tuple[str, ...], model: str) -> Submission:
    """Check which fields a form holds against what the model reads; RequestError (422) otherwise."""
    from seg_edge.runtime.io import unstated_order
    from seg_edge.runtime.regions import et_label

    scheme = form.text.get("label_scheme") or None
    if scheme is not None:
        et_label(scheme)  # InputError naming the schemes
    options: dict[str, Any] = {"label_scheme": scheme, "overlap": _overlap(form.text.get("overlap")),
                               "probabilities": _flag(form.text.get("probabilities"), "probabilities")}
    names = {str(form.files[f]): form.names[f] for f in form.files}
    given = [m for m in MODALITIES if m in form.files]
    if "stack" in form.files:
        if given:
            raise RequestError(f"fields stack and {', '.join(given)} given together (expected {FORM_HINT})")
        if not form.text.get("modalities"):
            raise RequestError(str(unstated_order(form.names["stack"], "a modalities field")))
        return Submission(_case_id(form.names["stack"]), form.files["stack"], _order(form.text["modalities"]),
                          names, **options)
    if not given:
        raise RequestError(f"no files uploaded (expected {FORM_HINT})")
    if form.text.get("modalities"):
        raise RequestError("modalities applies to a stack, not to separate modality files (named by their fields)")
    missing = [m for m in needed if m not in form.files]
    if missing:
        raise RequestError(f"field {missing[0]} missing (model {model!r} reads {', '.join(needed)}: "
                           f"send files in fields {', '.join(needed)})")
    first = form.names.get("flair", form.names[needed[0]])
    return Submission(_case_id(first), {m: form.files[m] for m in needed}, None, names, **options)
