"""CRC32 (zlib's) of a file written out of order: the head is known last.

crc32_combine lets the APR writer checksum the tensor data as it streams and
prepend the header's CRC at the end, without reading anything twice.
Same algorithm as zlib 1.2.12's crc32_combine (x^(8n) mod P by squaring).
"""

_POLY = 0xEDB88320


def _multmodp(a, b):
    """a * b modulo the CRC polynomial (reflected bit order)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table():
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


def _x8nmodp(n):
    """x^(8n) modulo P."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1, crc2, len2):
    """CRC of A+B from crc(A), crc(B) and len(B)."""
    return _multmodp(_x8nmodp(len2), crc1) ^ crc2
