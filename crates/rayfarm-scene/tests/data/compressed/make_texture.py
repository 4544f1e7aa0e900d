"""Writes texture.png (32 x 32 RGBA, smooth gradients and a soft disc) and texture_rgba8_zstd.ktx2,
the same texels as an uncompressed R8G8B8A8_SRGB KTX2 file with Zstandard supercompression.
Run: python3 make_texture.py (needs the `zstandard` package: pip install zstandard)."""
import math, struct, zlib
import zstandard

W = H = 32
texels = bytearray()
for y in range(H):
    for x in range(W):
        d = math.hypot(x - 15.5, y - 15.5) / 12.0
        disc = max(0.0, 1.0 - d * d)
        texels += bytes((x * 8, y * 8, int(64 + 160 * disc), 255 - x * 2))

def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

rows = b''.join(b'\x00' + bytes(texels[y * W * 4:(y + 1) * W * 4]) for y in range(H))
with open('texture.png', 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', W, H, 8, 6, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(rows, 9)) + chunk(b'IEND', b''))

# KTX2: header, one level, a basic data format descriptor for 4 x 8-bit sRGB channels.
level = zstandard.ZstdCompressor(level=19).compress(bytes(texels))
# One sample per channel (R, G, B, then alpha with the "linear" qualifier): bit offset, 8 bits,
# channel, 0..255.
samples = b''.join(struct.pack('<IIII', (i * 8) | (7 << 16) | (ch << 24), 0, 0, 255)
                   for i, ch in enumerate((0, 1, 2, 0x1F)))
# Basic descriptor block: RGBSDA colour model, BT.709 primaries, sRGB transfer, 4 bytes a texel.
dfd_body = struct.pack('<IHH', 0, 2, 24 + len(samples)) + bytes((1, 1, 2, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0)) + samples
dfd = struct.pack('<I', 4 + len(dfd_body)) + dfd_body
dfd_offset = 80 + 24
level_offset = dfd_offset + len(dfd)
level_offset += (-level_offset) % 8
header = bytes([0xAB, 0x4B, 0x54, 0x58, 0x20, 0x32, 0x30, 0xBB, 0x0D, 0x0A, 0x1A, 0x0A])
header += struct.pack('<9I', 43, 1, W, H, 0, 0, 1, 1, 2)  # R8G8B8A8_SRGB, zstd
header += struct.pack('<IIIIQQ', dfd_offset, len(dfd), 0, 0, 0, 0)
header += struct.pack('<QQQ', level_offset, len(level), len(texels))
out = header + dfd
out += b'\0' * (level_offset - len(out)) + level
with open('texture_rgba8_zstd.ktx2', 'wb') as f:
    f.write(out)
