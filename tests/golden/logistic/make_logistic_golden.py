"""Reference fits for ferrovene_interventions::logistic: scikit-learn's LogisticRegression on fixed
data sets, written to logistic.json (X, y, C, coef, intercept per case).

    pip install scikit-learn==1.5.2 numpy
    python make_logistic_golden.py   # from tests/golden/logistic/

Cases: more vectors than features with an overlapping planted direction (the usual probe), fewer
vectors than features and separable (the regime of a 576-wide probe on a few hundred texts, where
only the penalty bounds w), and a stronger penalty. lbfgs is run to a gradient tolerance of 1e-12,
so its coefficients are the optimum to about 1e-8.
"""
import json

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(0)
cases = []
for name, n, d, c, noise in [("overlapping", 200, 8, 1.0, 1.5), ("separable_wide", 40, 60, 1.0, 0.0), ("penalised", 150, 5, 0.05, 1.0)]:
    x = rng.normal(size=(n, d))
    direction = rng.normal(size=d)
    y = (x @ direction + 0.3 + noise * rng.normal(size=n)) > 0
    model = LogisticRegression(C=c, tol=1e-12, max_iter=100000, solver="lbfgs").fit(x, y)
    cases.append({"name": name, "C": c, "x": x.tolist(), "y": y.tolist(), "coef": model.coef_[0].tolist(),
                  "intercept": float(model.intercept_[0])})
json.dump({"sklearn": sklearn.__version__, "cases": cases}, open("logistic.json", "w"))
print({c["name"]: (len(c["x"]), len(c["coef"])) for c in cases})
