"""A strict, read-only zip reader for torch archives (child side, stdlib C modules only).

``zipfile`` would do, but it imports half the standard library (pathlib, shutil, threading,
importlib.util ...), which doubled the child's start-up time. This reads only what torch
writes: stored or deflated records, zip64 where needed, no encryption, no multi-disk, and it
rejects anything inconsistent (local and central names that differ, records past the end).
"""

import struct
import zlib

from .errors import Malformed

EOCD = b"PK\x05\x06"
EOCD64 = b"PK\x06\x06"
EOCD64_LOCATOR = b"PK\x06\x07"
CENTRAL = b"PK\x01\x02"
LOCAL = b"PK\x03\x04"
STORED, DEFLATED = 0, 8
MAX_ENTRIES = 1 << 20


class Entry:
    __slots__ = ("crc", "csize", "flags", "header", "method", "name", "size")

    def __init__(
        self, name: str, method: int, flags: int, crc: int, csize: int, size: int, header: int
    ) -> None:
        self.name, self.method, self.flags, self.crc = name, method, flags, crc
        self.csize, self.size, self.header = csize, size, header


def _pread(pread, n: int, offset: int) -> bytes:
    if n < 0 or offset < 0:  # a record or locator that points before the file's start
        raise Malformed("zip structure points outside the file")
    data = pread(n, offset)
    if len(data) != n:
        raise Malformed("zip structure runs past the end of the file")
    return data


class ZipArchive:
    def __init__(self, pread, size: int) -> None:
        """``pread(n, offset)`` reads the checkpoint; ``size`` is its length."""
        self.pread = pread
        self.size = size
        count, cd_size, cd_offset = self._end_record()
        if count > MAX_ENTRIES or cd_offset + cd_size > size:
            raise Malformed("zip central directory out of bounds")
        self.entries: list = self._central(_pread(pread, cd_size, cd_offset), count)
        self.by_name: dict = {}
        folded: set = set()
        for e in self.entries:
            # torch's reader (miniz) finds a record by its name without regard to ASCII case:
            # two names that differ only so would be read as one here and another there.
            low = e.name.encode("utf-8", "surrogatepass").lower()
            if e.name in self.by_name or low in folded:
                raise Malformed("the zip archive has duplicate record names (ignoring case)")
            self.by_name[e.name] = e
            folded.add(low)

    def _end_record(self) -> tuple:
        tail_len = min(self.size, 22 + 0xFFFF)
        tail = _pread(self.pread, tail_len, self.size - tail_len)
        at = tail.rfind(EOCD)
        if at < 0 or len(tail) - at < 22:
            raise Malformed("no zip end-of-central-directory record")
        disk, cd_disk, n_disk, count, cd_size, cd_offset, _comment = struct.unpack_from(
            "<HHHHIIH", tail, at + 4
        )
        if disk or cd_disk or n_disk != count:
            raise Malformed("multi-disk zip archives are not checkpoints")
        eocd_at = self.size - tail_len + at
        loc = _pread(self.pread, 20, eocd_at - 20) if eocd_at >= 20 else b""
        if loc[:4] != EOCD64_LOCATOR:
            if 0xFFFF in (count,) or 0xFFFFFFFF in (cd_size, cd_offset):
                raise Malformed("zip64 locator missing")
            return count, cd_size, cd_offset
        # torch's reader (miniz) takes the zip64 record whenever its locator is there, whatever
        # the 32-bit record says: so does this one, and the two must agree where the 32-bit
        # one holds a value (two directories in one file would be read differently otherwise).
        (rec_offset,) = struct.unpack_from("<Q", loc, 8)
        rec = _pread(self.pread, 56, rec_offset)
        if rec[:4] != EOCD64:
            raise Malformed("zip64 end record missing")
        (rest,) = struct.unpack_from("<Q", rec, 4)
        if rec_offset + 12 + rest != eocd_at - 20:
            raise Malformed("the zip64 end record is not where the archive ends")
        count64, cd_size64, cd_offset64 = struct.unpack_from("<QQQ", rec, 32)
        for short, long, marker in (
            (count, count64, 0xFFFF),
            (cd_size, cd_size64, 0xFFFFFFFF),
            (cd_offset, cd_offset64, 0xFFFFFFFF),
        ):
            if short not in (marker, long):
                raise Malformed("the zip's two end records name different directories")
        return count64, cd_size64, cd_offset64

    def _central(self, cd: bytes, count: int) -> list:
        entries = []
        pos = 0
        for _ in range(count):
            if cd[pos : pos + 4] != CENTRAL or pos + 46 > len(cd):
                raise Malformed("bad zip central directory entry")
            (flags, method, crc, csize, size, nlen, xlen, clen, header) = struct.unpack_from(
                "<4xHH4xIIIHHH8xI", cd, pos + 4
            )
            name_raw = cd[pos + 46 : pos + 46 + nlen]
            extra = cd[pos + 46 + nlen : pos + 46 + nlen + xlen]
            pos += 46 + nlen + xlen + clen
            if pos > len(cd):
                raise Malformed("zip central directory entry runs past its end")
            if flags & 0x1:
                raise Malformed("encrypted zip records are not checkpoints")
            size, csize, header = _zip64(extra, size, csize, header)
            name = name_raw.decode("utf-8" if flags & 0x800 else "latin-1")
            entries.append(Entry(name, method, flags, crc, csize, size, header))
        return entries

    def names(self) -> list:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> Entry:
        e = self.by_name.get(name)
        if e is None:
            raise Malformed(f"record {name} is missing")
        return e

    def data_offset(self, e: Entry) -> int:
        """Where the record's bytes start, checked against the local header."""
        head = _pread(self.pread, 30, e.header)
        if head[:4] != LOCAL:
            raise Malformed(f"bad local header for {e.name}")
        nlen, xlen = struct.unpack_from("<HH", head, 26)
        local_name = _pread(self.pread, nlen, e.header + 30)
        if local_name.decode("utf-8" if e.flags & 0x800 else "latin-1") != e.name:
            raise Malformed(f"local and central names of {e.name} differ")
        start = e.header + 30 + nlen + xlen
        if start + e.csize > self.size:
            raise Malformed(f"record {e.name} runs past the end of the file")
        return start

    def read(self, name: str, cap: int) -> bytes:
        """A whole (small) record, decompressed up to ``cap`` bytes, CRC-checked."""
        e = self.entry(name)
        if e.size > cap:
            raise Malformed(f"record {name} claims {e.size} bytes, over the cap of {cap}")
        raw = _pread(self.pread, e.csize, self.data_offset(e))
        if e.method == STORED:
            data = raw
        elif e.method == DEFLATED:
            d = zlib.decompressobj(-15)
            try:
                data = d.decompress(raw, cap + 1)
            except zlib.error as exc:
                raise Malformed(f"record {name} is not valid deflate data ({exc})") from None
            if len(data) > cap or d.unconsumed_tail:
                raise Malformed(f"record {name} expands past the cap of {cap} bytes")
        else:
            raise Malformed(f"record {name} uses compression method {e.method}")
        if len(data) != e.size or zlib.crc32(data) != e.crc:
            raise Malformed(f"record {name} fails its size or CRC check")
        return data


def _zip64(extra: bytes, size: int, csize: int, header: int) -> tuple:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 0x0001:
            values = []
            for i in range(0, len(body) - 7, 8):
                values.append(struct.unpack_from("<Q", body, i)[0])
            it = iter(values)
            if size == 0xFFFFFFFF:
                size = next(it, size)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if header == 0xFFFFFFFF:
                header = next(it, header)
        pos += 4 + length
    return size, csize, header
