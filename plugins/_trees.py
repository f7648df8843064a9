"""Tree ensembles walked in NumPy, every tree at once, one level per step (no entry point).

Shared by the flavors whose models are tree ensembles (`xgboost`, the
`sklearn` flavor's Isolation Forest), for `opsloop serve`'s fast path: on one
row, a library's own predict spends most of its time around the trees (input
checks, a matrix wrapper, thread dispatch: XGBoost's C predict takes about
150 us for a one-tree model here), while walking 300 trees of depth 6 is six
steps of a few `take`s on 300-element arrays.

`Forest` holds the nodes of all trees concatenated, in tree order, with a
node's two children side by side (`children[2k]`, `children[2k + 1]`) so that
a step is `children.take(node + went_right)`. A leaf points at itself: rows
reaching a shallow leaf early stay there while deeper trees go on. Each
flavor builds one from its library's own arrays and says how a row goes
right (`numpy.greater` for `x <= threshold` goes left, scikit-learn's rule;
`numpy.greater_equal` for `x < threshold` goes left, XGBoost's); a missing
value goes where the node says. `leaves(x)` gives each row's leaf values, in
tree order, so the flavor sums them as its library does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class Forest:
    """The trees of one model, flattened for `leaves`.

    Per-node arrays, all trees' nodes concatenated in tree order (`sizes[t]`
    nodes for tree t, each tree's root first): `feature`, `threshold`,
    `left` and `right` (indices within the node's own tree, -1 at a leaf),
    `missing_left` (where a missing value goes) and `value` (the leaf's
    value; ignored elsewhere). `goes_right(x, threshold)` is the library's
    comparison, elementwise. `depth` is the deepest leaf's depth.
    """

    def __init__(self, *, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
                 missing_left: np.ndarray, value: np.ndarray, sizes: np.ndarray, depth: int,
                 goes_right: np.ufunc) -> None:
        import numpy as np

        sizes = np.asarray(sizes, dtype=np.intp)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
        total = int(sizes.sum())
        left, right = np.asarray(left, dtype=np.intp), np.asarray(right, dtype=np.intp)
        leaf = left < 0
        own = np.arange(total, dtype=np.intp)
        offset = np.repeat(starts, sizes)
        left = np.where(leaf, own, left + offset)  # a leaf points at itself: walking stops there
        right = np.where(leaf, own, right + offset)
        # Node k lives at 2k: its children at 2k (left) and 2k + 1 (right), each a doubled node index.
        self.children = np.empty(2 * total, dtype=np.intp)
        self.children[0::2], self.children[1::2] = 2 * left, 2 * right
        self.feature = np.repeat(np.where(leaf, 0, np.asarray(feature, dtype=np.intp)), 2)
        self.threshold = np.repeat(np.asarray(threshold), 2)
        self.missing_right = np.repeat(~np.asarray(missing_left, dtype=bool), 2)
        self.value = np.repeat(np.asarray(value), 2)
        self.roots = 2 * starts
        self.trees = len(sizes)
        self.depth = int(depth)
        self.goes_right = goes_right

    def splits(self) -> tuple[np.ndarray, np.ndarray]:
        """The feature and threshold of every split node (leaves left out), in node order."""
        import numpy as np

        split = self.children[0::2] != 2 * np.arange(len(self.children) // 2)
        return self.feature[0::2][split], self.threshold[0::2][split]

    def probe_rows(self, width: int, rows: int = 64) -> np.ndarray:
        """Float32 rows of `width` features that reach many leaves: each feature takes one of its own split
        values, the float32 just below or just above one; every other row also misses one value in ten.
        Deterministic. For checking a walk against the library's own predict."""
        import numpy as np

        feature, threshold = self.splits()
        rng = np.random.default_rng(0)
        x = np.zeros((rows, width), dtype=np.float32)
        for j in range(width):
            values = threshold[feature == j].astype(np.float32)
            if values.size:
                pick, step = rng.choice(values, rows), rng.integers(-1, 2, rows)
                x[:, j] = np.where(step < 0, np.nextafter(pick, np.float32(-np.inf)),
                                   np.where(step > 0, np.nextafter(pick, np.float32(np.inf)), pick))
        holes = rng.random(x.shape) < 0.1
        holes[::2] = False
        x[holes] = np.nan
        return x

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Each row's leaf value in every tree, `(rows, trees)`, for a 2-D matrix `x` (C-contiguous, of the
        dtype the library compares in)."""
        import numpy as np

        rows, width = x.shape
        flat = x.ravel()
        children, feature, threshold, goes_right = self.children, self.feature, self.threshold, self.goes_right
        missing = bool(np.isnan(flat).any())
        if rows == 1:  # one row, the server's common case: 1-D steps, no offsets
            node = self.roots
            if not missing:
                for _ in range(self.depth):
                    node = children.take(node + goes_right(flat.take(feature.take(node)), threshold.take(node)))
            else:
                for _ in range(self.depth):
                    v = flat.take(feature.take(node))
                    right = np.where(np.isnan(v), self.missing_right.take(node), goes_right(v, threshold.take(node)))
                    node = children.take(node + right)
            return self.value.take(node)[None, :]
        offsets = (np.arange(rows, dtype=np.intp) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, self.trees))
        for _ in range(self.depth):
            v = flat.take(feature.take(node) + offsets)
            right = goes_right(v, threshold.take(node))
            if missing:
                right = np.where(np.isnan(v), self.missing_right.take(node), right)
            node = children.take(node + right)
        return self.value.take(node)
