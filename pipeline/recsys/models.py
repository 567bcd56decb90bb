"""The candidate models on dense indices: implicit ALS (conjugate-gradient half steps, in
bounded memory), a truncated SVD of the normalised interaction matrix (PureSVD: item-kNN
in low rank) and item popularity. All of them end as the arrays ``scoring.Recommender``
serves: item embeddings, user embeddings and an item bias.

Sparse matrices are CSR triples of numpy arrays (no scipy); every product runs over blocks
of rows with a bounded number of entries, so memory stays ~ entries x factors x 4 bytes
per block whatever the data's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BLOCK_ENTRIES = 1 << 18  # entries per block of a sparse product


@dataclass(frozen=True)
class Csr:
    indptr: np.ndarray  # int64, n_rows + 1
    idx: np.ndarray  # int32 column of each entry
    val: np.ndarray  # float32 value of each entry

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_coo(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int) -> Csr:
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        indptr = np.searchsorted(rows, np.arange(n_rows + 1)).astype(np.int64)
        return cls(indptr, cols[order].astype(np.int32), vals[order].astype(np.float32))

    def blocks(self, budget: int = BLOCK_ENTRIES) -> Iterator[tuple[int, int]]:
        """Consecutive row ranges of at most ``budget`` entries (or one row)."""
        r0, n = 0, self.n_rows
        while r0 < n:
            r1 = int(np.searchsorted(self.indptr, self.indptr[r0] + budget, side="right")) - 1
            r1 = min(max(r1, r0 + 1), n)
            yield r0, r1
            r0 = r1


def _segment_sum(values: np.ndarray, local_indptr: np.ndarray, n_rows: int) -> np.ndarray:
    """Sum of ``values`` (entries × k) per row of a block; rows without entries get 0."""
    out = np.zeros((n_rows, values.shape[1]), dtype=np.float32)
    counts = np.diff(local_indptr)
    filled = counts > 0
    if filled.any():
        out[filled] = np.add.reduceat(values, local_indptr[:-1][filled], axis=0)
    return out


def spmm(m: Csr, dense: np.ndarray) -> np.ndarray:
    """M @ dense, block by block."""
    out = np.zeros((m.n_rows, dense.shape[1]), dtype=np.float32)
    for r0, r1 in m.blocks():
        s, e = m.indptr[r0], m.indptr[r1]
        contrib = dense[m.idx[s:e]] * m.val[s:e, None]
        out[r0:r1] = _segment_sum(contrib, m.indptr[r0 : r1 + 1] - s, r1 - r0)
    return out


# --- implicit ALS ----------------------------------------------------------------------


@dataclass(frozen=True)
class AlsConfig:
    factors: int = 64
    regularization: float = 1.0
    alpha: float = 4.0  # confidence = 1 + alpha * (sum of the pair's type weights)
    iterations: int = 10
    cg_steps: int = 3
    seed: int = 11

    def label(self) -> str:
        return f"f={self.factors} reg={self.regularization:g} alpha={self.alpha:g} it={self.iterations}"


def _half_step(m: Csr, x: np.ndarray, other: np.ndarray, reg: float, alpha: float, steps: int) -> None:
    """Update every row of ``x`` by a few conjugate-gradient steps on
    (YtY + Yt(C-1)Y + reg I) x = Yt C p (Hu-Koren-Volinsky; Takács et al.'s CG), warm
    started from the current ``x``; no f×f matrix per row is ever formed."""
    f = other.shape[1]
    gram = (other.T.astype(np.float64) @ other + reg * np.eye(f)).astype(np.float32)
    for r0, r1 in m.blocks():
        s, e = m.indptr[r0], m.indptr[r1]
        lp = m.indptr[r0 : r1 + 1] - s
        n = r1 - r0
        y = other[m.idx[s:e]]
        cm1 = (alpha * m.val[s:e]).astype(np.float32)
        rep = np.repeat(np.arange(n), np.diff(lp))

        def apply(
            v: np.ndarray,
            y: np.ndarray = y,
            cm1: np.ndarray = cm1,
            rep: np.ndarray = rep,
            lp: np.ndarray = lp,
            n: int = n,
        ) -> np.ndarray:
            inner = np.einsum("ij,ij->i", v[rep], y) * cm1
            return v @ gram + _segment_sum(inner[:, None] * y, lp, n)

        xb = x[r0:r1]
        b = _segment_sum((1.0 + cm1)[:, None] * y, lp, n)
        r = b - apply(xb)
        p = r.copy()
        rs = np.einsum("ij,ij->i", r, r)
        for _ in range(steps):
            ap = apply(p)
            denom = np.einsum("ij,ij->i", p, ap)
            a = np.where(denom > 1e-20, rs / np.maximum(denom, 1e-20), 0.0).astype(np.float32)
            xb += a[:, None] * p
            r -= a[:, None] * ap
            rs_new = np.einsum("ij,ij->i", r, r)
            ratio = np.where(rs > 1e-20, rs_new / np.maximum(rs, 1e-20), 0.0).astype(np.float32)
            p = r + ratio[:, None] * p
            rs = rs_new
        x[r0:r1] = xb


def train_als(by_user: Csr, by_item: Csr, config: AlsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(user_emb, item_emb) of implicit ALS; the CSR values are the pairs' summed weights."""
    rng = np.random.default_rng(config.seed)
    users = np.zeros((by_user.n_rows, config.factors), dtype=np.float32)
    items = rng.normal(0, 0.1, (by_item.n_rows, config.factors)).astype(np.float32)
    steps = config.cg_steps
    for it in range(config.iterations):
        first = 3 * steps if it == 0 else steps  # the users start from zero
        _half_step(by_user, users, items, config.regularization, config.alpha, first)
        _half_step(by_item, items, users, config.regularization, config.alpha, steps)
    return users, items


# --- PureSVD (item-kNN in low rank) ------------------------------------------------------


@dataclass(frozen=True)
class SvdConfig:
    rank: int = 64
    popularity_damping: float = 0.5  # columns divided by (item count)^d: 0.5 ≈ cosine
    power_iterations: int = 4
    seed: int = 13

    def label(self) -> str:
        return f"rank={self.rank} d={self.popularity_damping:g}"


def svd_item_factors(by_user: Csr, n_items: int, config: SvdConfig) -> np.ndarray:
    """The top right singular vectors (n_items × rank) of the user × item matrix whose
    columns are damped by popularity: randomised range finder with power iterations,
    products by blocks of users (MtM Q never holds an n_users × rank matrix)."""
    counts = np.bincount(by_user.idx, minlength=n_items).astype(np.float32)
    scale = 1.0 / np.maximum(counts, 1.0) ** config.popularity_damping
    m = Csr(by_user.indptr, by_user.idx, (np.ones_like(by_user.val) * scale[by_user.idx]).astype(np.float32))
    width = min(config.rank + 10, n_items)
    rng = np.random.default_rng(config.seed)
    q = np.linalg.qr(rng.normal(size=(n_items, width)).astype(np.float32))[0]
    for _ in range(config.power_iterations):
        q = np.linalg.qr(_mtm(m, q, n_items)[0])[0]
    _, small = _mtm(m, q, n_items)
    evals, evecs = np.linalg.eigh(small.astype(np.float64))
    top = np.argsort(-evals)[: config.rank]
    return (q @ evecs[:, top].astype(np.float32)).astype(np.float32)


def _mtm(m: Csr, q: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(Mt M q, (M q)t (M q)), block by block of users."""
    out = np.zeros((n_items, q.shape[1]), dtype=np.float32)
    small = np.zeros((q.shape[1], q.shape[1]), dtype=np.float64)
    for r0, r1 in m.blocks():
        s, e = m.indptr[r0], m.indptr[r1]
        lp = m.indptr[r0 : r1 + 1] - s
        idx, val = m.idx[s:e], m.val[s:e]
        p = _segment_sum(q[idx] * val[:, None], lp, r1 - r0)
        small += p.T.astype(np.float64) @ p
        rep = np.repeat(np.arange(r1 - r0), np.diff(lp))
        contrib = p[rep] * val[:, None]
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        out[sorted_idx[starts]] += np.add.reduceat(contrib[order], starts, axis=0)
    return out, small


def mean_item_vectors(by_user: Csr, item_emb: np.ndarray) -> np.ndarray:
    """Each user's mean of the embeddings of the items they met (the SVD's user vectors)."""
    ones = Csr(by_user.indptr, by_user.idx, np.ones_like(by_user.val))
    sums = spmm(ones, item_emb)
    return sums / np.maximum(np.diff(by_user.indptr), 1)[:, None].astype(np.float32)


def popularity_bias(items: np.ndarray, n_items: int) -> np.ndarray:
    """log(1 + interactions) per dense item: the popularity model's score."""
    return np.log1p(np.bincount(items, minlength=n_items)).astype(np.float32)
