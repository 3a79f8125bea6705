"""Embedding storage and the deterministic lexical fallback.

Embeddings are stored as little-endian float32 bytes. Memories that have none get a
*lexical* embedding: word unigrams and bigrams hashed (BLAKE2b, so the same text
gives the same vector in every process) into a fixed number of dimensions, then
L2-normalized. Lexical vectors live in their own space and are only compared with
other lexical vectors.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

LEXICAL_DIM = 256
_WORD = re.compile(r"[\w']+", re.UNICODE)


def to_bytes(vector: np.ndarray | list[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _bucket(token: str) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % LEXICAL_DIM, (1.0 if value >> 63 else -1.0)


def lexical_embedding(text: str) -> np.ndarray:
    """Hashed unigram + bigram vector of ``text``, unit length (zero for empty text)."""
    words = _WORD.findall(text.lower())
    tokens = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    vector = np.zeros(LEXICAL_DIM, dtype=np.float32)
    for token in tokens:
        index, sign = _bucket(token)
        vector[index] += sign
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def squared_norms(matrix: np.ndarray) -> np.ndarray:
    """Each row's sum of squares, in float64: one pass, no temporary matrix, and it
    cannot overflow, so it is finite exactly when every value is, and zero exactly
    when every value is."""
    return np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)


def row_norms(squares: np.ndarray) -> np.ndarray:
    """Rows' lengths as float32, from their :func:`squared_norms`; the same formula for
    every read, so a memory's unit vector is the same to the bit however it was read."""
    return np.sqrt(squares).astype(np.float32)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero."""
    norms = row_norms(squared_norms(matrix))
    norms[norms == 0] = 1.0
    return (matrix / norms[:, None]).astype(np.float32, copy=False)
