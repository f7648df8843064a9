"""Save opsloop's XGBoost model as an MLflow model (run with the benchmark env's Python, not opsloop's).

Usage: benchmarks/.env/bin/python mlflow_model.py MODEL_UBJ FEATURES OUT_DIR

Loads the UBJ file opsloop wrote into an `XGBClassifier` and saves it with
`mlflow.xgboost.save_model`, with a signature of the feature columns (double,
what JSON numbers parse to), as `mlflow.xgboost.log_model` users would.
"""

import shutil
import sys

import mlflow.xgboost
import pandas as pd
import xgboost as xgb
from mlflow.models import infer_signature

model_path, features, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
model = xgb.XGBClassifier()
model.load_model(model_path)
example = pd.DataFrame([[0.5] * len(features)], columns=features, dtype="float64")
shutil.rmtree(out, ignore_errors=True)
mlflow.xgboost.save_model(model, out, signature=infer_signature(example, model.predict(example)), model_format="ubj")
print(f"mlflow {mlflow.__version__}, xgboost {xgb.__version__}: saved {out}")
