"""Training in plain numpy: the encoder's classification head and the n-gram linear model.

Both are small convex-ish problems on fixed features (a frozen encoder's per-layer
mean-pooled outputs; hashed n-gram counts), so a seeded mini-batch Adam loop is enough and
keeps torch out of the build.  Classes are weighted by inverse square-root frequency so the rare
prompt-injection class is not drowned by benign chat, without over-weighting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bert_onnx import DenseLayer


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray], lr_scale: float = 1.0) -> None:
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            mhat = m / (1 - b1**self.t)
            vhat = v / (1 - b2**self.t)
            p -= self.lr * lr_scale * mhat / (np.sqrt(vhat) + eps)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 512
    epochs: int = 80
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadConfig = HeadConfig()) -> list[DenseLayer]:
    """A one-hidden-layer MLP on the frozen encoder's features; input standardisation is
    folded into the first layer so the ONNX head is just two dense layers."""
    rng = np.random.default_rng(cfg.seed)
    x = x.astype(np.float32)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    d = x.shape[1]
    w1 = (rng.standard_normal((d, cfg.hidden)) * np.sqrt(2.0 / d)).astype(np.float32)
    b1 = np.zeros(cfg.hidden, np.float32)
    w2 = (rng.standard_normal((cfg.hidden, n_classes)) * np.sqrt(1.0 / cfg.hidden)).astype(np.float32)
    b2 = np.zeros(n_classes, np.float32)
    cw = class_weights(y, n_classes)
    opt = _Adam([w1, b1, w2, b2], cfg.lr)
    n = len(y)
    steps = cfg.epochs * ((n + cfg.batch - 1) // cfg.batch)
    step = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for s in range(0, n, cfg.batch):
            idx = order[s : s + cfg.batch]
            xb, yb = xs[idx], y[idx]
            h_pre = xb @ w1 + b1
            h = np.maximum(h_pre, 0)
            p = _softmax(h @ w2 + b2)
            sw = cw[yb]
            g = p.copy()
            g[np.arange(len(yb)), yb] -= 1
            g *= (sw / sw.sum())[:, None]
            gw2 = h.T @ g + cfg.weight_decay * w2
            gb2 = g.sum(axis=0)
            gh = (g @ w2.T) * (h_pre > 0)
            gw1 = xb.T @ gh + cfg.weight_decay * w1
            gb1 = gh.sum(axis=0)
            lr_scale = 0.5 * (1 + np.cos(np.pi * step / steps))  # cosine decay
            opt.step([gw1, gb1, gw2, gb2], lr_scale)
            step += 1
    w1_folded = (w1 / sd[:, None]).astype(np.float32)
    b1_folded = (b1 - (mu / sd) @ w1).astype(np.float32)
    return [DenseLayer(w1_folded, b1_folded, "relu"), DenseLayer(w2, b2, "softmax")]


def head_predict(layers: list[DenseLayer], x: np.ndarray) -> np.ndarray:
    """The head's forward pass in numpy (for checks; serving runs the ONNX graph)."""
    y = x.astype(np.float32)
    for layer in layers:
        y = y @ layer.weight + layer.bias
        y = np.maximum(y, 0) if layer.activation == "relu" else _softmax(y)
    return y


@dataclass(frozen=True)
class SparseRows:
    """CSR-style rows of (bucket, value) features: ``indptr`` delimits each row's slice."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_buckets(cls, rows: list[np.ndarray]) -> SparseRows:
        """L1-normalised bucket counts per row (duplicates merged)."""
        indptr = [0]
        idx_parts, val_parts = [], []
        for b in rows:
            if b.size:
                u, c = np.unique(b, return_counts=True)
                idx_parts.append(u)
                val_parts.append((c / b.size).astype(np.float32))
                indptr.append(indptr[-1] + u.size)
            else:
                indptr.append(indptr[-1])
        indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
        values = np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32)
        return cls(np.asarray(indptr, np.int64), indices.astype(np.int64), values)

    def take(self, rows: np.ndarray) -> SparseRows:
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        sel = (
            np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
            if len(rows)
            else np.zeros(0, np.int64)
        )
        return SparseRows(np.r_[0, np.cumsum(lens)].astype(np.int64), self.indices[sel], self.values[sel])

    def matmul(self, w: np.ndarray) -> np.ndarray:
        n = len(self.indptr) - 1
        out = np.zeros((n, w.shape[1]), np.float32)
        if self.indices.size == 0:
            return out
        contrib = w[self.indices] * self.values[:, None]
        row_of = np.repeat(np.arange(n), np.diff(self.indptr))
        for j in range(w.shape[1]):
            out[:, j] = np.bincount(row_of, weights=contrib[:, j], minlength=n)
        return out

    def rmatmul(self, g: np.ndarray, n_buckets: int) -> np.ndarray:
        """``X.T @ g`` for row gradients ``g [rows, labels]``."""
        row_of = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        out = np.empty((n_buckets, g.shape[1]), np.float32)
        for j in range(g.shape[1]):
            out[:, j] = np.bincount(self.indices, weights=self.values * g[row_of, j], minlength=n_buckets)
        return out


@dataclass(frozen=True)
class LinearConfig:
    epochs: int = 12
    batch: int = 256
    lr: float = 0.05
    l2: float = 1e-6
    seed: int = 0


def train_linear(
    x: SparseRows, y: np.ndarray, n_buckets: int, n_classes: int, cfg: LinearConfig = LinearConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on sparse hashed features; returns (W, bias)."""
    rng = np.random.default_rng(cfg.seed)
    w = np.zeros((n_buckets, n_classes), np.float32)
    b = np.zeros(n_classes, np.float32)
    cw = class_weights(y, n_classes)
    opt = _Adam([w, b], cfg.lr)
    n = len(y)
    steps = cfg.epochs * ((n + cfg.batch - 1) // cfg.batch)
    step = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for s in range(0, n, cfg.batch):
            idx = np.sort(order[s : s + cfg.batch])
            xb = x.take(idx)
            p = _softmax(xb.matmul(w) + b)
            g = p
            g[np.arange(len(idx)), y[idx]] -= 1
            sw = cw[y[idx]]
            g *= (sw / sw.sum())[:, None]
            gw = xb.rmatmul(g, n_buckets) + cfg.l2 * w
            lr_scale = 0.5 * (1 + np.cos(np.pi * step / steps))
            opt.step([gw, g.sum(axis=0)], lr_scale)
            step += 1
    return w, b
