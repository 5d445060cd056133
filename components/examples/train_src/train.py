"""Toy training step: fit a linear regression on synthetic data and save it as an MLflow model.

Two things matter for the trigger step that follows, and both are done on purpose here:
* MLmodel carries ``run_id`` (this step's MLflow run = its AML run id). ``save_model`` into an output folder
  does not record it, so it is set explicitly; the trigger reads it to report *this* run.
* the run is tagged ``model_name``, so the RunCompleted event Event Grid delivers for this run carries the
  same ``runTags`` the trigger component sends: both paths build the same ADO request.
"""

import argparse

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow.models import Model
from sklearn.linear_model import LinearRegression

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--model-name", required=True)
args = parser.parse_args()

rng = np.random.default_rng(7)
x = rng.normal(size=(200, 3))
y = x @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.1, size=200)
model = LinearRegression().fit(x, y)

with mlflow.start_run() as run:  # inside AML this is the step's own run
    mlflow.set_tag("model_name", args.model_name)
    mlflow.log_metric("r2", float(model.score(x, y)))
    mlflow.sklearn.save_model(model, args.model)
    saved = Model.load(args.model)
    saved.run_id = run.info.run_id
    saved.save(f"{args.model}/MLmodel")
