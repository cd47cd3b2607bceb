"""A small reader for MATLAB level-5 ``.mat`` files, enough for two datasets' annotations.

Oxford Flowers ships its labels as ``imagelabels.mat`` (a numeric vector) and Stanford Cars
its annotations as struct arrays with char and numeric fields plus a cell array of class
names.  The reference reads them with ``scipy.io.loadmat``; we do not want SciPy as a
dependency for two files, so this module decodes the subset of the documented level-5
format they use: numeric, logical and char arrays, cell arrays and struct arrays, stored
plainly or zlib-compressed.  Values are returned flattened in MATLAB's column-major order:
numbers as ``list`` (a single number as a scalar), char arrays as ``str``, cells as
``list`` and structs as ``list`` of ``dict``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64 = 7, 9, 12, 13
MI_MATRIX, MI_COMPRESSED, MI_UTF8, MI_UTF16, MI_UTF32 = 14, 15, 16, 17, 18
NUMERIC_FORMATS = {MI_INT8: "b", MI_UINT8: "B", MI_INT16: "h", MI_UINT16: "H", MI_INT32: "i",
                   MI_UINT32: "I", MI_SINGLE: "f", MI_DOUBLE: "d", MI_INT64: "q", MI_UINT64: "Q"}
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MX_NUMERIC = range(6, 16)


class MatFileError(ValueError):
    """The file is not a level-5 MAT file, or uses a feature this reader does not decode."""


class _Reader:
    def __init__(self, data: bytes, endian: str, source: str):
        self.data, self.endian, self.source = data, endian, source

    def fail(self, message: str):
        raise MatFileError(f"{self.source}: {message}")

    def elements(self, start: int, end: int):
        """Yield (type, payload) of the data elements in data[start:end]."""
        position = start
        while position + 8 <= end:
            first, second = struct.unpack_from(self.endian + "II", self.data, position)
            if first >> 16:  # small data element: size and type share the first word
                data_type, size = first & 0xFFFF, first >> 16
                yield data_type, self.data[position + 4:position + 4 + size]
                position += 8
                continue
            data_type, size = first, second
            payload_start = position + 8
            if payload_start + size > end:
                self.fail("truncated data element")
            yield data_type, self.data[payload_start:payload_start + size]
            position = payload_start + size
            if data_type != MI_COMPRESSED:
                position += (-size) % 8  # elements are padded to 8 bytes

    def numbers(self, data_type: int, payload: bytes) -> list:
        fmt = NUMERIC_FORMATS.get(data_type)
        if fmt is None:
            self.fail(f"unsupported numeric data type {data_type}")
        count = len(payload) // struct.calcsize(fmt)
        return list(struct.unpack(f"{self.endian}{count}{fmt}", payload[:count * struct.calcsize(fmt)]))

    def matrix(self, payload: bytes):
        """Decode one miMATRIX payload into (name, value)."""
        sub = _Reader(payload, self.endian, self.source)
        parts = list(sub.elements(0, len(payload)))
        if len(parts) < 3:
            if len(parts) == 0:
                return "", []
            self.fail("matrix element too short")
        flags = sub.numbers(parts[0][0], parts[0][1])
        array_class = flags[0] & 0xFF
        dims = sub.numbers(parts[1][0], parts[1][1])
        name = parts[2][1].decode("latin-1")
        numel = 1
        for dim in dims:
            numel *= dim
        rest = parts[3:]
        if array_class in MX_NUMERIC:
            if not rest:
                return name, []
            values = sub.numbers(*rest[0])
            if len(values) != numel:
                self.fail(f"variable {name!r}: {len(values)} values for shape {dims}")
            # MATLAB stores labels and indices as doubles; give whole numbers back as ints.
            values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
            return name, values[0] if numel == 1 else values
        if array_class == MX_CHAR:
            if not rest:
                return name, ""
            data_type, raw = rest[0]
            if data_type == MI_UTF8:
                text = raw.decode("utf-8")
            elif data_type in (MI_UTF16, MI_UINT16):
                text = raw.decode("utf-16-le" if self.endian == "<" else "utf-16-be")
            elif data_type in (MI_UINT8, MI_INT8):
                text = raw.decode("latin-1")
            else:
                text = "".join(chr(c) for c in sub.numbers(data_type, raw))
            rows = dims[0] if dims else 1
            if rows > 1:  # column-major: row r is every rows-th character from r
                text = "\n".join(text[r::rows] for r in range(rows))
            return name, text
        if array_class == MX_CELL:
            return name, [sub.matrix(item)[1] for data_type, item in rest if data_type == MI_MATRIX]
        if array_class == MX_STRUCT:
            name_length = sub.numbers(*rest[0])[0]
            raw_names = rest[1][1]
            fields = [raw_names[i:i + name_length].split(b"\0", 1)[0].decode("latin-1")
                      for i in range(0, len(raw_names), name_length)]
            values = [sub.matrix(item)[1] for data_type, item in rest[2:] if data_type == MI_MATRIX]
            if len(values) != numel * len(fields):
                self.fail(f"struct {name!r}: {len(values)} field values for {numel} x {len(fields)}")
            records = [dict(zip(fields, values[i * len(fields):(i + 1) * len(fields)]))
                       for i in range(numel)]
            return name, records
        self.fail(f"variable {name!r} has MATLAB class {array_class} (sparse/object arrays are "
                  "not supported)")


def read_mat(path: str | Path) -> dict:
    """Read the variables of a level-5 MAT file (see the module docstring for the value types)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 128:
        raise MatFileError(f"{path}: too short for a MAT file")
    indicator = data[126:128]
    if indicator == b"IM":
        endian = "<"
    elif indicator == b"MI":
        endian = ">"
    else:
        raise MatFileError(f"{path}: not a level-5 MAT file (MATLAB v7.3/HDF5 files are not "
                           "supported)")
    reader = _Reader(data, endian, str(path))
    variables = {}
    for data_type, payload in reader.elements(128, len(data)):
        if data_type == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as error:
                raise MatFileError(f"{path}: corrupt compressed element ({error})") from error
            inner = _Reader(payload, endian, str(path))
            for inner_type, inner_payload in inner.elements(0, len(payload)):
                if inner_type == MI_MATRIX:
                    name, value = reader.matrix(inner_payload)
                    variables[name] = value
        elif data_type == MI_MATRIX:
            name, value = reader.matrix(payload)
            variables[name] = value
    return variables
