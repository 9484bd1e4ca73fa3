"""The write-access flags of an HDF5 superblock (file format 1.10, which featcache stores use from format 3 on, so that
HDF5 checksums its own metadata: chunk index, object headers, superblock).

HDF5 sets these flags while a file is open for writing and clears them on close; a writer that never closed (SIGKILL,
a full disk that dropped the closing writes) leaves them set, and HDF5 then refuses every later open ("file is
already open for write"). featcache's lock file says whether a writer still runs; when none does, the writer taking
over clears the flags in place (`clear_write_flags`, what ``h5clear -s`` does) and a reader reads through a view in
which they are clear (`ClearedFlagsFile`), writing nothing.
"""

from __future__ import annotations

import io
import struct

SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Where featcache's HDF5 superblock starts: after the user block holding its signature.
SUPERBLOCK_AT = 512
FLAGS_AT = 11  # signature 8, versions of the superblock 1, sizes of offsets and lengths 1 + 1
MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5's metadata (``H5_checksum_lookup3``)."""
    a = b = c = (0xDEADBEEF + len(data) + initval) & MASK
    rest = data
    while len(rest) > 12:
        x, y, z = struct.unpack_from("<3I", rest)
        a, b, c = (a + x) & MASK, (b + y) & MASK, (c + z) & MASK
        a = ((a - c) & MASK) ^ _rot(c, 4)
        c = (c + b) & MASK
        b = ((b - a) & MASK) ^ _rot(a, 6)
        a = (a + c) & MASK
        c = ((c - b) & MASK) ^ _rot(b, 8)
        b = (b + a) & MASK
        a = ((a - c) & MASK) ^ _rot(c, 16)
        c = (c + b) & MASK
        b = ((b - a) & MASK) ^ _rot(a, 19)
        a = (a + c) & MASK
        c = ((c - b) & MASK) ^ _rot(b, 4)
        b = (b + a) & MASK
        rest = rest[12:]
    if not rest:
        return c
    x, y, z = struct.unpack("<3I", rest.ljust(12, b"\0"))
    a, b, c = (a + x) & MASK, (b + y) & MASK, (c + z) & MASK
    c = ((c ^ b) - _rot(b, 14)) & MASK
    a = ((a ^ c) - _rot(c, 11)) & MASK
    b = ((b ^ a) - _rot(a, 25)) & MASK
    c = ((c ^ b) - _rot(b, 16)) & MASK
    a = ((a ^ c) - _rot(c, 4)) & MASK
    b = ((b ^ a) - _rot(a, 14)) & MASK
    c = ((c ^ b) - _rot(b, 24)) & MASK
    return c


def _superblock(head: bytes) -> tuple[int, int] | None:
    """(length, flags) of the version-3 superblock at the start of ``head``; None for another version or none."""
    if len(head) < 12 or head[:8] != SIGNATURE or head[8] < 3:
        return None
    length = 12 + 4 * head[9] + 4  # base, extension, end-of-file and root addresses, then the checksum
    return (length, head[FLAGS_AT]) if len(head) >= length else None


def cleared(head: bytes) -> bytes | None:
    """The superblock at the start of ``head`` with its write flags cleared and its checksum recomputed; None when
    it is not a version-3 superblock or its flags are clear already."""
    found = _superblock(head)
    if found is None or not found[1]:
        return None
    length = found[0]
    block = bytearray(head[:length])
    block[FLAGS_AT] = 0
    block[length - 4 :] = struct.pack("<I", lookup3(bytes(block[: length - 4])))
    return bytes(block)


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(SUPERBLOCK_AT)
        return f.read(64)


def write_flags_set(path: str) -> bool:
    """Whether the HDF5 file at ``path`` is marked open for writing (by a writer that may be gone)."""
    found = _superblock(_head(path))
    return bool(found and found[1])


def clear_write_flags(path: str) -> None:
    """Clear the write flags of the file at ``path`` in place; only for a writer that holds the store's lock."""
    block = cleared(_head(path))
    if block is not None:
        with open(path, "r+b") as f:
            f.seek(SUPERBLOCK_AT)
            f.write(block)


class ClearedFlagsFile(io.RawIOBase):
    """The file at ``path``, read-only, as if its superblock's write flags were clear (for h5py's ``fileobj``
    driver): a reader of a store whose writer died reads it without writing to it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.raw = open(path, "rb", buffering=0)
        self.block = cleared(_head(path)) or b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        start = self.raw.tell()
        count = self.raw.readinto(buffer)
        lo, hi = max(start, SUPERBLOCK_AT), min(start + count, SUPERBLOCK_AT + len(self.block))
        if lo < hi:  # the read overlaps the superblock: its cleared bytes instead
            memoryview(buffer)[lo - start : hi - start] = self.block[lo - SUPERBLOCK_AT : hi - SUPERBLOCK_AT]
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()
