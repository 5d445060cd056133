"""Toy training for build validation: a synthetic, linearly separable dataset and a logistic regression.

It fails (non-zero exit, so the AML job is Failed) when accuracy is below --min-accuracy, which is what a
build-validation run is for: prove that code, environment and compute still produce a sane model.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--min-accuracy", type=float, default=0.7)
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    x = rng.normal(size=(args.rows, 4))
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=args.rows) > 0).astype(int)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    accuracy = LogisticRegression().fit(x_train, y_train).score(x_test, y_test)
    print(f"accuracy={accuracy:.3f}")
    try:
        import mlflow

        mlflow.log_metric("accuracy", accuracy)
    except ImportError:
        pass
    return 0 if accuracy >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
