"""The fairness-of-exposure LP written out by hand for scipy's linprog: the independent check of
solvers.exposure_lp that its tests and its benchmark share."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog


def reference_lp(u, groups, v, G, criterion, tol) -> float:
    """The same LP written out by hand in matrix form for scipy's linprog (HiGHS):
    x = [vec(P) row-major, t]; optimum value of u^T P v."""
    M, K = u.shape[0], v.shape[0]
    n = M * K + 1
    c = np.zeros(n)
    c[:-1] = -np.outer(u, v).ravel()
    A_eq = np.zeros((K, n))
    for j in range(K):
        A_eq[j, j:M * K:K] = 1.0
    A_ub, b_ub = [], []
    for i in range(M):
        row = np.zeros(n)
        row[i * K:(i + 1) * K] = 1.0
        A_ub.append(row)
        b_ub.append(1.0)
    for g in range(G):
        members = groups == g
        coef = members / members.sum()
        if criterion == "disparate_treatment":
            coef = coef / u[members].mean()
        row = np.zeros(n)
        row[:-1] = np.outer(coef, v).ravel()
        row[-1] = -1.0
        A_ub.append(row)
        b_ub.append(tol / 2)
        A_ub.append(-row)
        b_ub.append(tol / 2)
    bounds = [(0, None)] * (M * K) + [(None, None)]
    res = linprog(c, A_ub=np.array(A_ub), b_ub=b_ub, A_eq=A_eq, b_eq=np.ones(K), bounds=bounds,
                  method="highs")
    assert res.status == 0
    return -res.fun
