"""Row validation helpers shared by the CSV importers: each check names the file, line and field."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from automc.errors import ValidationError

# Facts of the public datasets the published figures use: classes, image size, channels, images.
DATASETS: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (10, 32, 3, 60000),
    "cifar100": (100, 32, 3, 60000),
    "svhn": (10, 32, 3, 99289),
    "imagenet": (1000, 224, 3, 1331167),
    "birds-200": (200, 224, 3, 11788),
}


def model_name(raw: str) -> str:
    """One spelling per architecture across sources: ``Resnet-56`` and ``resnet56`` are the same model."""
    return re.sub(r"[\s_\-]", "", raw.strip().lower())


def read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs of a CSV file; raises ``ValidationError`` if unreadable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValidationError(f"not a UTF-8 text file (byte {e.start}); save it as UTF-8 CSV", path=str(path)) from None
    except OSError as e:
        raise ValidationError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ValidationError("NUL byte in a text file (binary data?)", path=str(path), line=line)
    reader = csv.DictReader(text.splitlines())
    try:
        header = [h.strip() for h in reader.fieldnames or []]
    except csv.Error as e:
        raise _csv_error(path, reader, e) from None
    if not header:
        raise ValidationError("empty file: expected a CSV header line", path=str(path), line=1)

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        try:
            for row in reader:
                if None in row:
                    raise ValidationError("more values than columns", path=str(path), line=reader.line_num)
                yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}
        except csv.Error as e:
            raise _csv_error(path, reader, e) from None

    return header, rows()


def _csv_error(path: Path, reader: csv.DictReader, e: csv.Error) -> ValidationError:
    """``FILE:LINE: problem`` for what the csv module refuses (a field over its size limit, a stray quote)."""
    problem = "field too large" if "field larger than field limit" in str(e) else f"malformed CSV: {e}"
    # DictReader.line_num is updated only after a row parses; its inner reader's counts the failing line too.
    return ValidationError(problem, path=str(path), line=max(reader.reader.line_num, 1))


class RowChecker:
    """Collects typed fields of one row; the first bad field raises ``ValidationError`` with its location."""

    def __init__(self, path: Path, line: int, row: dict[str, str]) -> None:
        self.path, self.line, self.row = path, line, row

    def fail(self, field: str, problem: str) -> ValidationError:
        return ValidationError(problem, path=str(self.path), line=self.line, field=field)

    def text(self, field: str) -> str:
        value = self.row.get(field, "")
        if not value:
            raise self.fail(field, "required value is missing")
        return value

    def number(self, field: str, *, lo: float = -math.inf, hi: float = math.inf, required: bool = True,
               integer: bool = False) -> Any:
        raw = self.row.get(field, "")
        if raw == "":
            if required:
                raise self.fail(field, "required value is missing")
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(field, f"expected a number, got {raw!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self.fail(field, f"{raw} is outside [{lo}, {hi}]")
        if integer:
            if value != int(value):
                raise self.fail(field, f"expected a whole number, got {raw!r}")
            return int(value)
        return value
