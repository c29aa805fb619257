"""Builders of hostile model files, written byte by byte where the frameworks would not write them:
zip archives with a member of 1 GiB of zeros deflated to 1 MB, made in milliseconds (a 1 MiB
block of zeros, fully flushed, deflates to the same bytes every time, so the stream is that block
repeated), and torch.save pickles describing any storage, sizes and strides."""
import collections
import io
import pickle
import struct
import zlib

STORED, DEFLATED = 0, 8


def deflated_zeros(size, block=1 << 20):
    """(raw deflate stream of `size` zero bytes, its CRC-32); size a multiple of block."""
    assert size % block == 0
    zeros = bytes(block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    return one * (size // block) + compressor.flush(), crc


def write(path, members):
    """members: [(name, data)] stored as they are, or [(name, (deflate stream, crc, size))]."""
    out, central = bytearray(), bytearray()
    for name, data in members:
        encoded = name.encode()
        if isinstance(data, tuple):
            payload, crc, size = data
            method = DEFLATED
        else:
            payload, crc, size, method = data, zlib.crc32(data), len(data), STORED
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size,
                           len(encoded), 0) + encoded
        out += payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload),
                               size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    with open(path, "wb") as f:
        f.write(out)
    return path


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, size, stride, offset=0):
        self.storage, self.size, self.stride, self.offset = storage, tuple(size), tuple(stride), offset


def torch_pickle(obj):
    """obj pickled as torch.save pickles it: Tensor stand-ins become _rebuild_tensor_v2 calls on
    FloatStorage persistent ids (needs torch, for the globals' names)."""
    import torch
    import torch._utils

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", torch.FloatStorage, o.key, "cpu", o.numel)
            return None

        def reducer_override(self, o):
            if isinstance(o, Tensor):
                return (torch._utils._rebuild_tensor_v2,
                        (o.storage, o.offset, o.size, o.stride, False, collections.OrderedDict()))
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_zip(path, pickle_bytes, storages=()):
    """A torch.save zip file: archive/data.pkl and archive/data/<key> for each (key, data)."""
    return write(path, [("archive/data.pkl", pickle_bytes), ("archive/byteorder", b"little")]
                 + [("archive/data/%s" % key, data) for key, data in storages])


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def torch_legacy(path, pickle_bytes, storages=()):
    """A torch.save file in the older format: magic, protocol, system info, the object's pickle,
    the storage keys, then each storage's element count and bytes (float32)."""
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2), pickle_bytes,
             pickle.dumps([key for key, _ in storages], protocol=2)]
    for _, data in storages:
        parts.append(struct.pack("<q", len(data) // 4) + data)
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return path


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(path, width, height, colour_type=6, bit_depth=8):
    """A PNG of width x height zeros (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA), written
    without holding the image: 13000 x 13000 RGBA is 660 KB on disk, 676 MB decoded. Made as
    deflated_zeros makes its stream: one fully flushed block of identical rows, repeated."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = bytes(1 + width * channels * bit_depth // 8)  # filter byte 0, then the row's zero samples
    rows_per_block = max(1, (1 << 20) // len(row))
    block = row * rows_per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, rows_per_block)
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(block, adler)
    tail = row * rest
    adler = zlib.adler32(tail, adler)
    stream = b"\x78\xda" + one * full + compressor.compress(tail) + compressor.flush() + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
                + _png_chunk(b"IEND", b""))
    return str(path)
