"""Users' table files, read the same way by the dataset spec's reader (training), ``python -m
training init`` and ``python -m service.batch``.

Formats: Parquet, CSV, TSV and JSON (one object a line, or one array of objects), optionally
compressed (``.gz``, ``.bz2``, ``.zst``). Files are read as spreadsheets, editors and scripts
save them; what cannot be read fails with a message saying which option to set:

* **encoding**: UTF-8 unless a byte-order mark says otherwise: UTF-8 with a BOM (Excel's
  "CSV UTF-8"), UTF-16 (Excel's "Unicode Text", PowerShell 5's ``>``) or UTF-32; a mark
  outranks the ``encoding`` option. Other encodings are named with ``encoding`` (``cp1252``
  for Excel's "CSV" on Windows, ``latin-1``); bytes that are not valid in it fail naming the
  line. (Parquet text is always UTF-8.)
* **delimiter** (CSV, TSV): ``,`` for CSV and a tab for TSV, unless ``delimiter`` names one;
  when it is not named and the header line has no such delimiter but exactly one of ``;``,
  tab or ``|`` (spreadsheets in locales with decimal commas write ``;``), that one.
* **decimal** (CSV, TSV): ``.`` or ``,`` (``decimal = ","`` for ``3,5``).
* **line ends**: LF, CRLF or CR; quoted cells may hold line breaks.
* **missing values**: JSON ``null`` and Parquet nulls are missing; so is a cell whose whole
  text is one of ``na_values`` (default ``[""]``: an empty cell), in every format. Nothing
  else: ``NA``, ``null``, ``None``, ``n/a`` are values (the country code of Namibia, a
  person's name) unless ``na_values`` lists them. Id columns (``ids``) are never missing
  because of their spelling: they are read as text and kept as written.
* **text**: ids and ``text`` columns are read as text whatever they look like (zip code
  ``02139`` keeps its zero). Date strings stay text (``model.timestamps`` reads them).
* **a column whose type varies by row**: CSV reads it as text (a typed column's conversion
  then names the cell it cannot read); JSON keeps each cell's own type.
* **header** (CSV, TSV): names are trimmed; unnamed columns without values (the trailing
  separators of spreadsheet exports) are dropped; an unnamed column with values, or a name
  given twice, fails naming it.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
COMPRESSIONS = (".gz", ".bz2", ".zst")
DEFAULT_NA_VALUES: tuple[str, ...] = ("",)
DECIMALS = (".", ",")
_DEFAULT_DELIMITER = {"csv": ",", "tsv": "\t"}
_OTHER_DELIMITERS = (";", "\t", "|", ",")
_BOMS = (  # longest first: the UTF-32 LE mark starts like the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
# pyarrow would turn date strings into its own timestamps, with its own rules for offsets and
# ranges; they stay text for model.timestamps. A strptime format no cell matches turns its
# inference off ([] would mean its default ISO 8601 parser).
NO_TIMESTAMPS = ["%Y-%m-%d (dates are read as text)"]

Hint = Callable[[str, str], str]


def _plain_hint(option: str, value: str) -> str:
    return f'set {option} = "{value}"'


class TableFileError(ValueError):
    """A table file cannot be read; the message names the file (and line, column) and the
    option or edit that makes it readable."""


@dataclass(frozen=True)
class TableOptions:
    """How to read one table file (the dataset spec's table keys; the batch CLI's flags).

    Attributes:
        format: ``parquet``, ``csv``, ``tsv`` or ``jsonl``; None: from the file name.
        encoding: a Python codec name (``cp1252``); None: UTF-8 or what a BOM says.
        delimiter: one character; None: the format's, or the header line's (see above).
        decimal: ``.`` or ``,``.
        na_values: cell texts that mean a missing value (ids excepted).
    """

    format: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    decimal: str = "."
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES


def check_options(encoding: str | None, delimiter: str | None, decimal: str) -> None:
    """Refuse options no file can be read with.

    Raises:
        ValueError: an unknown encoding, a delimiter that is not one character (or a quote
            or line break), a decimal mark other than ``.`` or ``,``.
    """
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(
                f"encoding {encoding!r} is not a known encoding; e.g. utf-8, cp1252 (Windows "
                "Western European), latin-1, utf-16"
            ) from None
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise ValueError(
            f"delimiter {delimiter!r}: expected one character such as ',', ';', '|' or '\\t'"
        )
    if decimal not in DECIMALS:
        raise ValueError(f"decimal {decimal!r}: expected '.' or ','")


def table_format(path: Path, declared: str | None = None) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl`` from ``declared`` or the file name.

    Raises:
        TableFileError: the name does not tell.
    """
    if declared:
        return declared
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() not in COMPRESSIONS]
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    raise TableFileError(
        f"{path}: cannot tell the format from the name; expected one of "
        f"{', '.join(sorted(FORMATS))} (optionally {', '.join(COMPRESSIONS)}), or "
        f"{_plain_hint('format', 'csv')} (or parquet, tsv, jsonl)"
    )


def _open(path: Path) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="detect")


def _head(path: Path, size: int = 1 << 16) -> bytes:
    with _open(path) as stream:
        return stream.read(size)


def file_encoding(path: Path, declared: str | None = None, hint: Hint = _plain_hint) -> str:
    """The encoding a text file is read with: its byte-order mark's, else ``declared``, else
    UTF-8.

    Raises:
        TableFileError: no mark and NUL bytes at the start (UTF-16 or UTF-32 without a
            mark): the message says which encoding to set.
    """
    head = _head(path, 4)
    for mark, name in _BOMS:
        if head.startswith(mark):
            return name
    if declared is None and b"\x00" in head:
        guess = "utf-16-le" if head[1:2] == b"\x00" else "utf-16-be"
        raise TableFileError(
            f"{path}: the file starts with NUL bytes and no byte-order mark: it looks like "
            f"UTF-16 or UTF-32 text without its mark; {hint('encoding', guess)} (or save it "
            "as UTF-8)"
        )
    return declared or "utf-8"


def sniff_delimiter(path: Path, kind: str, encoding: str) -> str:
    """The delimiter of a CSV/TSV file whose spec names none: the format's, unless the header
    line lacks it and holds exactly one of ``;``, tab, ``|`` (or ``,`` for TSV)."""
    default = _DEFAULT_DELIMITER[kind]
    text = _head(path).decode(encoding, errors="replace")
    header = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    if default in header:
        return default
    found = [d for d in _OTHER_DELIMITERS if d != default and d in header]
    return found[0] if len(found) == 1 else default


def resolve_options(
    path: Path, options: TableOptions | None = None, hint: Hint = _plain_hint
) -> TableOptions:
    """``options`` with the format, encoding and delimiter the file will be read with.

    Raises:
        TableFileError: the format cannot be told, or the encoding (see
            :func:`file_encoding`).
    """
    options = options or TableOptions()
    kind = table_format(path, options.format)
    if kind == "parquet":
        return TableOptions(kind, None, None, options.decimal, options.na_values)
    encoding = file_encoding(path, options.encoding, hint)
    delimiter = options.delimiter
    if kind in ("csv", "tsv") and delimiter is None:
        delimiter = sniff_delimiter(path, kind, encoding)
    return TableOptions(kind, encoding, delimiter, options.decimal, options.na_values)


def read_table_file(
    path: Path,
    options: TableOptions | None = None,
    *,
    ids: Collection[str] = (),
    text: Collection[str] = (),
    all_text: bool = False,
    hint: Hint = _plain_hint,
    row_groups: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One table file as a DataFrame (see the module docstring for what is read how).

    Args:
        path: the file.
        options: format, encoding, delimiter, decimal mark and missing-value texts
            (default: every default).
        ids: id columns: read as text, never missing because of their spelling.
        text: other columns to read as text whatever they look like (CSV, TSV).
        all_text: read every CSV/TSV column as text (the batch CLI: cells are converted by
            the model's fields).
        hint: ``(option, value) -> "how to set it"`` for messages, in the caller's terms.
        row_groups: read only these row groups of a Parquet file (a process's data shard).

    Raises:
        TableFileError: missing, unreadable, or not in the encoding; the message says what
            to change.
    """
    path = Path(path)
    if not path.is_file():
        raise TableFileError(f"{path} does not exist")
    opts = resolve_options(path, options, hint)
    try:
        if opts.format == "parquet":
            import pyarrow.parquet as pq

            if row_groups is None:
                table = pq.read_table(path)
            else:
                table = pq.ParquetFile(path).read_row_groups(list(row_groups))
        elif opts.format in ("csv", "tsv"):
            table = _read_csv(path, opts, [*ids, *text], all_text)
        else:
            table = _read_json(path, opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as e:
        if isinstance(e, TableFileError):
            raise
        if opts.encoding is not None and not decodes(path, opts.encoding):
            raise _encoding_error(path, opts.encoding, hint) from None
        raise TableFileError(
            f"{path}: could not read it as {opts.format}: {_reason(e, opts)}"
        ) from None
    if isinstance(table, pa.Table):
        table = _tidy_header(table, path)
        binary = [
            f
            for f in table.schema
            if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
        ]
        if binary and opts.format != "parquet":  # pyarrow keeps text it cannot decode as bytes
            raise _encoding_error(path, opts.encoding, hint)
        frame = table.to_pandas()
    else:
        frame = _tidy_frame(table, path)
    return mark_missing(frame, opts.na_values, keep=ids)


def mark_missing(
    frame: pd.DataFrame, na_values: Sequence[str], keep: Collection[str] = ()
) -> pd.DataFrame:
    """``frame`` with every text cell whose whole text is one of ``na_values`` set missing
    (None), in every column but ``keep`` (the ids)."""
    na = set(na_values)
    if not na:
        return frame
    out = frame
    for name in frame.columns:
        if name in keep:
            continue
        column = frame[name]
        if pd.api.types.is_string_dtype(column) and column.dtype != object:
            hit = column.isin(na).to_numpy()
        elif column.dtype == object:
            hit = column.map(lambda v: isinstance(v, str) and v in na).to_numpy(bool)
        else:
            continue
        if hit.any():
            if out is frame:
                out = frame.copy()
            out[name] = column.astype(object).where(~hit, None)
    return out


def _read_csv(path: Path, opts: TableOptions, text: Sequence[str], all_text: bool) -> pa.Table:
    from pyarrow import csv

    encoding = "utf8" if opts.encoding in ("utf-8", "utf-8-sig") else opts.encoding
    read = csv.ReadOptions(encoding=encoding)
    parse = csv.ParseOptions(delimiter=opts.delimiter, newlines_in_values=True)
    if all_text or text:  # the header's own names (they are trimmed after reading)
        with _open(path) as stream:
            names = csv.open_csv(stream, read_options=read, parse_options=parse).schema.names
        wanted = set(text)
        text = [n for n in names if all_text or n.strip() in wanted]
    convert = csv.ConvertOptions(
        column_types={c: pa.string() for c in text},
        null_values=list(opts.na_values),
        strings_can_be_null=False,  # text cells: na_values are applied by mark_missing
        timestamp_parsers=NO_TIMESTAMPS,
        decimal_point=opts.decimal,
    )
    with _open(path) as stream:
        return csv.read_csv(stream, read_options=read, parse_options=parse, convert_options=convert)


def _read_json(path: Path, opts: TableOptions) -> pa.Table | pd.DataFrame:
    from pyarrow import json

    if _first_char(path, opts.encoding) == "[":  # one array of objects, not JSON lines
        return _pandas_json(path, opts, lines=False)

    def read(schema: pa.Schema | None = None) -> pa.Table:
        parse = json.ParseOptions(explicit_schema=schema) if schema else None
        with _open(path) as raw:
            stream = raw
            if opts.encoding not in ("utf-8", "utf-8-sig"):
                stream = pa.transcoding_input_stream(raw, opts.encoding, "utf-8")
            return json.read_json(stream, parse_options=parse)

    try:
        table = read()
        dated = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
        if dated:  # read again with those as the text they are
            table = read(pa.schema([(name, pa.string()) for name in dated]))
    except pa.ArrowInvalid as e:
        if "changed from" not in str(e):
            raise
        # A key whose values change type by row (2139 here, "02139-1" there): pandas keeps
        # each cell's own type.
        return _pandas_json(path, opts, lines=True)
    return table


def _pandas_json(path: Path, opts: TableOptions, lines: bool) -> pd.DataFrame:
    return pd.read_json(
        path,
        lines=lines,
        orient="records",
        dtype=False,  # no conversion: numbers, strings and lists as written, dates as text
        precise_float=True,
        encoding=opts.encoding,  # utf-8-sig skips a UTF-8 mark
        compression="infer",
    )


def _first_char(path: Path, encoding: str) -> str:
    text = _head(path, 4096).decode(encoding, errors="replace").lstrip("\ufeff \t\r\n")
    return text[:1]


def _tidy_header(table: pa.Table, path: Path) -> pa.Table:
    names = [str(n).strip() for n in table.column_names]
    keep = []
    for k, name in enumerate(names):
        if name:
            keep.append(k)
            continue
        column = table.column(k)
        values = [v for v in column.to_pylist() if v is not None and str(v).strip() != ""]
        if values:
            raise TableFileError(
                f"{path}: column {k + 1} has no name in the header but holds values (e.g. "
                f"{values[0]!r}); name it in the header, or delete the column (an index saved "
                "by pandas' to_csv without index=False looks like this)"
            )
    table = table.select(keep).rename_columns([names[k] for k in keep])
    _unique(table.column_names, path)
    return table


def _tidy_frame(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip())
    _unique(list(frame.columns), path)
    return frame


def _unique(names: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise TableFileError(
                f"{path}: the header names column {name!r} twice (columns {seen[name] + 1} "
                f"and {k + 1}); rename one of them"
            )
        seen[name] = k


def decodes(path: Path, encoding: str) -> bool:
    """Whether the whole (decompressed) file is valid text in ``encoding``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with _open(path) as stream:
            while chunk := stream.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _encoding_error(path: Path, encoding: str | None, hint: Hint) -> TableFileError:
    """Where the text stops being ``encoding``: the line and its bytes, and what to set."""
    encoding = encoding or "utf-8"
    where, likely = "", ""
    with _open(path) as stream:
        data = stream.read(1 << 26)  # the first 64 MiB: enough to find the line
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError as e:
            bad = line[e.start : e.end]
            where = f"line {number} holds bytes {bad!r} that are not {encoding} ({line[:60]!r})"
            try:
                as_cp1252 = line.decode("cp1252").strip()
                likely = f" (read as cp1252 the line is {as_cp1252[:60]!r})"
            except UnicodeDecodeError:
                pass
            break
    else:
        where = f"it is not {encoding} text"
    if codecs.lookup(encoding).name == "utf-8":
        fix = (
            f"the file was saved in another encoding, probably Windows-1252{likely} (what "
            f'Excel\'s "CSV" writes on Windows): {hint("encoding", "cp1252")} (or latin-1, '
            'or the encoding it was saved in), or save it as "CSV UTF-8"'
        )
    else:
        fix = f"{hint('encoding', 'ENCODING')} with the encoding it was saved in"
    return TableFileError(f"{path}: {where}; {fix}")


def _reason(error: Exception, opts: TableOptions) -> str:
    """pyarrow's reason, with what usually causes it."""
    text = str(error)
    if "Expected" in text and "columns, got" in text:
        shown = "tab" if opts.delimiter == "\t" else repr(opts.delimiter)
        text += (
            f" (a row has more or fewer cells than the header: check the delimiter, read as "
            f"{shown}, and that cells holding it are quoted)"
        )
    return text
