"""tokenizer.model, a SentencePiece ModelProto, read with a plain protobuf walk (no protobuf
library): the pieces, scores and types the converter's SentencePiece routines take."""

import struct

from .errors import BadInput
from .model import read_small

# gguf.TokenType / SentencePieceTokenTypes
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

MAX_SPM_BYTES = 64 << 20


def read_pieces(path):
    """(pieces, scores, types) of tokenizer.model, a SentencePiece ModelProto: field 1 is
    each piece as a message {1: piece (string), 2: score (float), 3: type (enum, default
    NORMAL)}; every other field is skipped. A plain protobuf walk, no protobuf library."""
    data = read_small(path, MAX_SPM_BYTES, "tokenizer.model")
    pieces, scores, types = [], [], []
    n, i = len(data), 0
    unpack_f = struct.Struct("<f").unpack_from

    def bad(why):
        raise BadInput(f"is not a SentencePiece model ({why} at byte {i})", path)

    def varint(j):
        shift = result = 0
        while True:
            if j >= n:
                bad("truncated varint")
            b = data[j]
            j += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, j
            shift += 7
            if shift > 63:
                bad("varint too long")

    while i < n:
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, i = varint(i)
            end = i + length
            if end > n:
                bad("a field runs past the end")
            if field == 1:
                piece, score, ptype = None, 0.0, NORMAL
                j = i
                while j < end:
                    k = data[j]
                    if k < 0x80:
                        j += 1
                    else:
                        k, j = varint(j)
                    f, w = k >> 3, k & 7
                    if j >= end:
                        bad("a piece's field has no value")
                    if w == 2:
                        ln = data[j]
                        if ln < 0x80:
                            j += 1
                        else:
                            ln, j = varint(j)
                        if j + ln > end:
                            bad("a piece runs past its message")
                        if f == 1:
                            try:
                                piece = data[j:j + ln].decode("utf-8")
                            except UnicodeDecodeError:
                                bad("a piece is not UTF-8")
                        j += ln
                    elif w == 5:
                        if j + 4 > end:
                            bad("truncated float")
                        if f == 2:
                            score = unpack_f(data, j)[0]
                        j += 4
                    elif w == 0:
                        v, j = varint(j)
                        if f == 3:
                            ptype = v
                    elif w == 1:
                        j += 8
                    else:
                        bad(f"wire type {w}")
                if piece is None:
                    bad("a piece without text")
                pieces.append(piece)
                scores.append(score)
                types.append(ptype)
            i = end
        elif wire == 0:
            _, i = varint(i)
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            bad(f"wire type {wire}")
    if i != n:
        bad("truncated")
    if not pieces:
        raise BadInput("is not a SentencePiece model (it holds no pieces)", path)
    return pieces, scores, types
