#!/usr/bin/python3
"""bradley_terry_reference.py: an independent Bradley-Terry fit for tests/common/test_arena_ratings.c.

Reads battles ("FIRST SECOND SCORE" per line, SCORE 1, 0 or 0.5) and the number of arms from argv,
and prints one rating per line (400 r + 1000). It fits the same model as common/arena_ratings.c
the way Chatbot Arena's notebook does, but by other means: one logistic-regression row per battle
(a tie or both_bad is two rows of weight 1/2, one won by each side), features +ln 10 for the first
arm and -ln 10 for the second, no intercept, the same ridge (1e-4 on r), minimised by scipy's
BFGS with the analytic gradient. Exit 3 when scipy is missing (the test then skips).
"""
import sys

try:
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit
except ImportError:
    sys.exit(3)

RIDGE = 1e-4


def main():
    n_arms = int(sys.argv[2])
    rows, labels, weights = [], [], []
    with open(sys.argv[1]) as f:
        for line in f:
            first, second, score = line.split()
            first, second, score = int(first), int(second), float(score)
            x = np.zeros(n_arms)
            x[first], x[second] = np.log(10.0), -np.log(10.0)
            if score == 0.5:
                rows += [x, x]
                labels += [1.0, 0.0]
                weights += [0.5, 0.5]
            else:
                rows.append(x)
                labels.append(score)
                weights.append(1.0)
    X, y, w = np.array(rows), np.array(labels), np.array(weights)

    def loss(r):
        z = X @ r
        return -(w * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum() + RIDGE * (r @ r)

    def grad(r):
        z = X @ r
        return -X.T @ (w * (y - expit(z))) + 2 * RIDGE * r

    res = minimize(loss, np.zeros(n_arms), jac=grad, method="BFGS",
                   options={"gtol": 1e-10, "maxiter": 10000})
    for r in res.x:
        print("%.10f" % (400 * r + 1000))


if __name__ == "__main__":
    main()
