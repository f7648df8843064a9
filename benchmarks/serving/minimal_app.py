"""The floor for an HTTP server: a raw ASGI callable around the raw XGBoost model.

Usage: python minimal_app.py MODEL_UBJ FEATURES PORT [THREADS]   (FEATURES: comma-separated; THREADS: XGBoost's)

No framework, no validation, no logging: parse JSON, build a float32 array,
`predict_proba`, answer JSON. POST bodies are `{"instances": [{feature: value}, ...]}`
or KServe v2 (`{"inputs": [...]}`: one [n, k] tensor or one [n] tensor per
feature); GET is a readiness probe; POST /noop answers without parsing (the
load generator's ceiling). Run by uvicorn with httptools, one worker.
"""

import json
import sys

import numpy as np
import uvicorn
import xgboost as xgb


def make_app(model_path: str, features: list[str], threads: int = 0):
    model = xgb.XGBClassifier()
    model.load_model(model_path)
    if threads:
        model.set_params(n_jobs=threads)

    def rows(req: dict) -> np.ndarray:
        if "instances" in req:
            return np.array([[r[f] for f in features] for r in req["instances"]], dtype=np.float32)
        inputs = req["inputs"]
        if len(inputs) == 1:
            return np.asarray(inputs[0]["data"], dtype=np.float32).reshape(inputs[0]["shape"])
        by_name = {i["name"]: i["data"] for i in inputs}
        return np.array([by_name[f] for f in features], dtype=np.float32).T

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        if scope["method"] == "GET" or scope["path"] == "/noop":
            out = b'{"ready": true}'
        else:
            req = json.loads(body)
            score = model.predict_proba(rows(req))[:, 1].tolist()
            out = json.dumps({"outputs": [{"name": "score", "shape": [len(score)], "datatype": "FP64",
                                           "data": score}]} if "inputs" in req else {"predictions": score}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


if __name__ == "__main__":
    path, names, port = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    uvicorn.run(make_app(path, names, threads), host="127.0.0.1", port=port, http="httptools", lifespan="off",
                access_log=False, log_level="warning", workers=1, proxy_headers=False, server_header=False)
