"""A small reward model for off-policy estimators: L2-regularised logistic regression (numpy +
scipy's L-BFGS), and an additive click model built on it whose features split into a context
block, an item block, a position block and one context-item "pair" column, so that predictions
for every (context, item, position) are a sum of three small products instead of a design matrix
of n * items * positions rows.

    model = fit_logistic(X, y, l2=1.0)            # X: float64[n, d], y: 0/1
    p = model.predict_proba(X)                    # float64[n]

    click = fit_click_model(ctx, item_feats, pos_feats, pair, rows, items, positions, clicks)
    q = click.predict(ctx, item_feats, pos_feats, pair)  # float64[n_ctx, n_items, n_positions]

No scikit-learn: the objective is the mean log loss plus 0.5 * l2 * ||w||^2 / n (the intercept is
not penalised), minimised with its analytic gradient; `Logistic.converged` says whether L-BFGS
met its tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit


@dataclass(frozen=True)
class Logistic:
    """A fitted logistic regression: P(y = 1 | x) = sigmoid(x @ coef + intercept)."""

    coef: np.ndarray  # float64[d]
    intercept: float
    l2: float
    n_train: int
    converged: bool
    log_loss: float  # mean log loss on the training rows (without the penalty)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, "X")
        if X.shape[1] != self.coef.size:
            raise ValueError(f"X: expected {self.coef.size} columns (the fitted features), got {X.shape[1]}")
        return X @ self.coef + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """float64[n]: P(y = 1) per row."""
        return expit(self.decision_function(X))


def _matrix(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name}: must be a 2-d array (rows x features), got shape {X.shape}")
    if not np.isfinite(X).all():
        r, c = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{name}: must be finite, got {X[r, c]} at row {r}, column {c}")
    return X


def _labels(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y: must have one label per row ({n}), got shape {y.shape}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y: labels must be 0 or 1, got {y[i].item()!r} at row {i}")
    return y.astype(np.float64)


def fit_logistic(X, y, *, l2: float = 1.0, sample_weight=None, max_iter: int = 1000,
                 tol: float = 1e-9) -> Logistic:
    """Fit P(y = 1 | x) by L2-penalised maximum likelihood (L-BFGS-B).

    Parameters
    ----------
    X : float64[n, d]
    y : 0/1 labels [n]
    l2 : penalty on the coefficients (not the intercept): the objective is
        sum_i w_i * logloss_i / sum_i w_i + 0.5 * l2 * ||coef||^2 / n.
    sample_weight : optional float64[n] >= 0 (default ones).
    """
    X = _matrix(X, "X")
    n, d = X.shape
    if n == 0:
        raise ValueError("X: no rows to fit")
    y = _labels(y, n)
    if not (isinstance(l2, (int, float)) and l2 >= 0 and np.isfinite(l2)):
        raise ValueError(f"l2: must be a number >= 0, got {l2!r}")
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight: must be one finite weight >= 0 per row, not all 0")
    w = w / w.sum()
    pen = l2 / n
    sign = 2.0 * y - 1.0  # log-likelihood of a row: log_expit(sign * z)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, b = theta[:d], theta[d]
        z = X @ coef + b
        loss = -(w @ log_expit(sign * z)) + 0.5 * pen * (coef @ coef)
        g = w * (expit(z) - y)  # d loss / d z
        grad = np.empty(d + 1)
        grad[:d] = X.T @ g + pen * coef
        grad[d] = g.sum()
        return float(loss), grad

    # start from the intercept of the marginal rate: the optimum is near it when signal is weak
    rate = float(np.clip(w @ y, 1e-6, 1 - 1e-6))
    theta0 = np.zeros(d + 1)
    theta0[d] = np.log(rate / (1 - rate))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-7})
    coef, b = res.x[:d].copy(), float(res.x[d])
    z = X @ coef + b
    log_loss = float(-(w @ log_expit(sign * z)))
    return Logistic(coef=coef, intercept=b, l2=float(l2), n_train=n, converged=bool(res.success),
                    log_loss=log_loss)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClickModel:
    """P(click | context r, item i, position p) = sigmoid(ctx[r] @ w_ctx + items[i] @ w_item +
    positions[p] @ w_pos + pair[r, i] * w_pair + b): a logistic regression on the concatenated
    blocks, evaluated for every (r, i, p) without building the n * items * positions matrix."""

    logistic: Logistic
    n_ctx_features: int
    n_item_features: int
    n_position_features: int

    def _split(self):
        c = self.logistic.coef
        a, b, k = self.n_ctx_features, self.n_item_features, self.n_position_features
        return c[:a], c[a:a + b], c[a + b:a + b + k], float(c[a + b + k])

    def predict(self, ctx, items, positions, pair) -> np.ndarray:
        """float64[n_ctx, n_items, n_positions]: the click probability of every item at every
        position for every context row."""
        ctx, items, positions, pair = (_matrix(m, name) for m, name in (
            (ctx, "ctx"), (items, "items"), (positions, "positions"), (pair, "pair")))
        self._check(ctx, items, positions, pair)
        w_ctx, w_item, w_pos, w_pair = self._split()
        z = ((ctx @ w_ctx)[:, None, None] + (items @ w_item)[None, :, None]
             + (positions @ w_pos)[None, None, :] + (pair * w_pair)[:, :, None]
             + self.logistic.intercept)
        return expit(z)

    def predict_logged(self, ctx, items, positions, pair, rows, item, position) -> np.ndarray:
        """float64[m]: the click probability of (rows[j], item[j], position[j]) for each j."""
        X = design(ctx, items, positions, pair, rows, item, position)
        return self.logistic.predict_proba(X)

    def _check(self, ctx, items, positions, pair) -> None:
        for m, name, k in ((ctx, "ctx", self.n_ctx_features), (items, "items", self.n_item_features),
                           (positions, "positions", self.n_position_features)):
            if m.shape[1] != k:
                raise ValueError(f"{name}: expected {k} feature columns (as fitted), got {m.shape[1]}")
        if pair.shape != (ctx.shape[0], items.shape[0]):
            raise ValueError(f"pair: must be contexts x items {(ctx.shape[0], items.shape[0])}, "
                             f"got {pair.shape}")


def design(ctx, items, positions, pair, rows, item, position) -> np.ndarray:
    """The design matrix of logged (row, item, position) triples: [ctx[row], items[item],
    positions[position], pair[row, item]] per triple (0-based indices)."""
    rows, item, position = (np.asarray(a, dtype=np.int64) for a in (rows, item, position))
    for a, name, hi in ((rows, "rows", len(ctx)), (item, "item", len(items)),
                        (position, "position", len(positions))):
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise ValueError(f"{name}: indices must be in [0, {hi}), got {a.min()}..{a.max()}")
    return np.hstack([ctx[rows], items[item], positions[position], pair[rows, item][:, None]])


def fit_click_model(ctx, items, positions, pair, rows, item, position, clicks, *,
                    l2: float = 1.0, sample_weight=None) -> ClickModel:
    """Fit the additive click model on logged triples (0-based `rows` into ctx / pair, `item`
    into items, `position` into positions) and their 0/1 `clicks`."""
    ctx, items, positions, pair = (_matrix(m, name) for m, name in (
        (ctx, "ctx"), (items, "items"), (positions, "positions"), (pair, "pair")))
    X = design(ctx, items, positions, pair, rows, item, position)
    fitted = fit_logistic(X, clicks, l2=l2, sample_weight=sample_weight)
    return ClickModel(fitted, ctx.shape[1], items.shape[1], positions.shape[1])


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss of probabilities p against 0/1 labels y (clipped at 1e-12)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


__all__ = ["ClickModel", "Logistic", "design", "fit_click_model", "fit_logistic", "log_loss"]
