"""Picking k diverse rows of an embedding matrix. Pure numpy, no I/O.

Vectors are float32 rows of unit length, so cosine similarity is a dot
product and one greedy step is one matrix-vector product: selecting k of n
in d dimensions costs O(k·n·d) time and O(n·d) memory for the matrix plus
one float32 per row. A step reads the whole matrix, so memory bandwidth sets
the pace: ``reduce_dims`` keeps the matrix near 8M cells (100,000 rows → 80
principal axes), and 1,000 of 100,000 then takes seconds.

Greedy k-center (Gonzalez 1985) keeps, for every row, its distance to the
nearest chosen row and picks the farthest row next; it is a 2-approximation
of the optimal k-center radius, which is what "most diverse set" means here
(Dynosaur's replay study picks instructions that cover the space). The first
pick is the row farthest from the mean direction, so the result is
deterministic for a given matrix.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["CANDIDATES", "MAX_CELLS", "k_center", "k_center_naive", "mean_pairwise_cosine",
           "normalize_rows", "random_pick", "reduce_dims"]

MAX_CELLS = 8_000_000
CANDIDATES = 2048
MIN_DIMS = 64

F32 = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def normalize_rows(x: npt.NDArray[np.floating]) -> F32:
    """Rows scaled to unit length (a zero row stays zero), as a float32 array."""
    out = np.asarray(x, dtype=np.float32)
    # einsum, not linalg.norm: no temporary the size of ``x`` (100 MB at 100,000 x 256).
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def k_center(x: F32, k: int, *, candidates: int = CANDIDATES) -> Ints:
    """Indices of ``k`` rows of unit-length ``x`` picked by greedy k-center on cosine distance.

    The same picks as the plain greedy (``k_center_naive``: one full pass over
    ``x`` a step), with far fewer passes. ``nearest[i]`` (the highest
    similarity of row ``i`` to a chosen row) only grows, so a value missing
    the latest centers is a lower bound. The ``candidates`` rows with the
    lowest bounds are kept exact, step by step, at a small cost; the best of
    them is the true next pick whenever its exact value is at most the lowest
    bound outside the set. When it is not, the centers chosen meanwhile are
    folded into every row at once (one pass for many centers, as a matrix
    product) and the set is drawn again.

    >>> k_center(normalize_rows(np.eye(3, dtype=np.float32)), 2).tolist()
    [0, 1]
    """
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    centroid = x.sum(axis=0, dtype=np.float64).astype(np.float32)
    first = int(np.argmin(x @ centroid))
    chosen = [first]
    nearest = x @ x[first]
    nearest[first] = np.inf
    pending: list[int] = []
    cand = np.empty(0, dtype=np.int64)
    exact = np.empty(0, dtype=np.float32)
    xs = np.empty((0, x.shape[1]), dtype=np.float32)
    bound = -np.inf
    while len(chosen) < k:
        j = int(np.argmin(exact)) if exact.size else -1
        if j < 0 or not exact[j] <= bound:
            # Fold the pending centers into every row, then draw a new candidate set.
            _fold(x, nearest, pending)
            pending = []
            size = min(candidates, n)
            if size < n:
                cand = np.argpartition(nearest, size)[:size]
                bound = float(np.partition(nearest, size)[size])
            else:
                cand = np.arange(n, dtype=np.int64)
                bound = np.inf
            exact = nearest[cand].copy()
            xs = x[cand]
            continue
        p = int(cand[j])
        chosen.append(p)
        pending.append(p)
        nearest[p] = np.inf
        # einsum runs in this thread; a BLAS call this small loses more to waking
        # BLAS threads than it gains (15x slower here on a busy 2-core machine).
        np.maximum(exact, np.einsum("ij,j->i", xs, x[p]), out=exact)
        exact[j] = np.inf
    return np.asarray(chosen, dtype=np.int64)


def _fold(x: F32, nearest: F32, centers: list[int], block: int = 8192) -> None:
    """``nearest`` raised by the similarities to ``centers``, a block of rows at a time."""
    if not centers:
        return
    c = x[np.asarray(centers)].T.copy()
    for lo in range(0, x.shape[0], block):
        sims = x[lo:lo + block] @ c
        np.maximum(nearest[lo:lo + block], sims.max(axis=1), out=nearest[lo:lo + block])


def k_center_naive(x: F32, k: int) -> Ints:
    """The plain greedy: one full pass over ``x`` a step (the reference for tests)."""
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    centroid = x.sum(axis=0, dtype=np.float64).astype(np.float32)
    first = int(np.argmin(x @ centroid))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = first
    # Highest similarity of each row to any chosen row; the next pick has the lowest.
    nearest = x @ x[first]
    nearest[first] = np.inf
    for j in range(1, k):
        i = int(np.argmin(nearest))
        chosen[j] = i
        np.maximum(nearest, x @ x[i], out=nearest)
        nearest[i] = np.inf
    return chosen


def reduce_dims(x: F32, max_cells: int = MAX_CELLS, min_dims: int = MIN_DIMS) -> F32:
    """``x`` kept as is if ``n·d <= max_cells``, else projected on its top principal axes.

    Uncentred (the Gram matrix's best low-rank fit, so dot products are kept as
    well as any linear map of that size can), at least ``min_dims`` columns,
    rows renormalised. One greedy step reads the whole matrix, so its size is
    what sets the time of a step; 8M cells (32 MB) stays in this machine's
    caches and memory bandwidth.
    """
    n, d = x.shape
    dims = max(min_dims, max_cells // max(n, 1))
    if dims >= d:
        return x
    gram = np.zeros((d, d), dtype=np.float64)
    for lo in range(0, n, 16384):
        block = x[lo:lo + 16384]
        gram += block.T @ block
    _vals, vecs = np.linalg.eigh(gram)
    top = vecs[:, ::-1][:, :dims].astype(np.float32)
    return normalize_rows(x @ top)


def random_pick(n: int, k: int, seed: int = 0) -> Ints:
    """``k`` distinct indices of ``n``, seeded (the baseline)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(k, n), replace=False)).astype(np.int64)


def mean_pairwise_cosine(x: F32) -> float:
    """Mean cosine similarity over distinct pairs of unit-length rows, in O(n·d)."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    s = x.sum(axis=0, dtype=np.float64)
    self_sim = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    return float((s @ s - self_sim) / (n * (n - 1)))
