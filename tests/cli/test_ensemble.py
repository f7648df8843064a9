"""The `ensemble` trainer from the command line: members checked with the config, trained, saved each by its own
flavor, loaded without pickle, and combined by rank (issue 13, item 7).

Real data: the embedded ASD set (tests/conftest.py's SMALL: omi-1 and omi-9 trained, four servers monitored).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w
from opsloop.testing import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402

MODEL = SMALL["project"]["name"]


def project(path: Path, train: dict[str, Any]) -> Path:
    table = copy.deepcopy(SMALL)
    table["train"] = train
    path.mkdir(parents=True, exist_ok=True)
    (path / "opsloop.toml").write_text(tomli_w.dumps(table), encoding="utf-8")
    return path


def ensemble(members: list[str], **options: Any) -> dict[str, Any]:
    return {"plugins": ["ensemble"], "ensemble": {"members": members, **options},
            "xgboost": {"n_estimators": 60}, "isolation-forest": {"n_estimators": 60}}


def loaded(path: Path, number: int = 1) -> Any:
    from opsloop import config
    from opsloop.runner import Runner
    from opsloop.session import Session

    runner = Runner(Session.open(config.read(workdir=path)))
    try:
        return runner.load(runner.store.get(MODEL, number))
    finally:
        runner.close()


def monitored() -> pd.DataFrame:
    from opsloop import datasets

    return datasets.load("asd").query(SMALL["data"]["monitor"]).reset_index(drop=True)


def ranks_by_hand(meta: dict[str, Any], member: int, scores: np.ndarray) -> np.ndarray:
    """A member's ranks from `ensemble.json` alone, with NumPy: the empirical CDF through the kept quantiles
    (scaled into [0, 0.999]); above the top quantile, 0.999 plus a share of the rest."""
    ref = meta["references"][member]
    q, p = np.asarray(ref["quantiles"]), np.asarray(ref["levels"])
    out = 0.999 * np.interp(scores, q, p)
    above = scores > q[-1]
    out[above] = 0.999 + 0.001 * (1 - np.exp(-(scores[above] - q[-1]) / ref["spread"]))
    return out


def centred(rank: np.ndarray, cut: float) -> np.ndarray:
    """The combined rank rescaled so that the training cut lands on 0.5."""
    return np.where(rank < cut, 0.5 * rank / cut, 0.5 + 0.5 * (rank - cut) / (1 - cut))


def datasets_train() -> pd.DataFrame:
    from opsloop import datasets

    return datasets.load("asd").query(SMALL["data"]["train"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = project(tmp_path_factory.mktemp("ensemble"), ensemble(["xgboost", "isolation-forest"]))
    out = invoke(["run", "--json", "--quiet"], path).assert_ok().json
    return {"path": path, "out": out}


def test_it_trains_registers_and_each_member_is_saved_by_its_own_flavor(trained: dict[str, Any]) -> None:
    path, out = trained["path"], trained["out"]
    shown = invoke(["models", "show", f"{MODEL}:1", "--json"], path).assert_ok().json
    assert shown["flavor"] == "ensemble" and shown["task"] == "classification"
    assert shown["params"]["members"] == ["xgboost", "isolation-forest"]
    assert shown["params"]["xgboost.flavor"] == "xgboost" and shown["params"]["isolation-forest.task"] == "anomaly"
    # the members' plugin versions are part of the lineage, as the trainer's are
    assert {"ensemble", "xgboost", "isolation-forest"} <= set(shown["lineage"]["versions"]["plugins"])
    bundle = Path(shown["path"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"members/0-xgboost/model.ubj", "members/1-isolation-forest/model.skops",
            "ensemble.json"} <= set(manifest["files"])
    assert out["versions"][0]["threshold"]["rule"] == "budget"  # calibrated like any binary model


def test_its_score_is_the_mean_of_the_members_ranks_and_ranks_unseen_servers(trained: dict[str, Any]) -> None:
    from sklearn.metrics import roc_auc_score

    model = loaded(trained["path"])
    frame = monitored()
    predictions = model.predict(frame)
    meta = json.loads((model.path / "ensemble.json").read_text())
    # each member, loaded by its own flavor, scores the same features; their ranks average to the score
    features = model.transform(frame).frame.loc[predictions.index]
    members = model.estimator.members
    ranks = []
    for index, (name, task, columns, estimator) in enumerate(members):
        X = features[list(columns)]
        raw = estimator.predict_proba(X)[:, 1] if task == "classification" else -estimator.score_samples(X)
        ranks.append(ranks_by_hand(meta, index, np.asarray(raw, dtype="float64")))
        assert name == meta["members"][index]["name"]
    expected = centred(np.mean(ranks, axis=0), meta["cut"])
    np.testing.assert_allclose(predictions["score"].to_numpy(dtype=float), expected, rtol=0, atol=1e-12)
    assert ((expected >= 0) & (expected <= 1)).all()
    # alerts follow the version's calibrated threshold, and the combined ranking is useful on these servers
    assert (predictions["prediction"].to_numpy() == (expected >= model.threshold["value"])).all()
    assert roc_auc_score(frame["label"], expected) > 0.7


def test_a_changed_member_file_is_refused_before_anything_loads(trained: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from opsloop.bundle import read_bundle
    from opsloop.errors import BundleError
    from opsloop.manager import PluginManager

    copy_ = tmp_path / "bundle"
    shutil.copytree(loaded(trained["path"]).path, copy_)
    for p in copy_.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    member = copy_ / "members" / "1-isolation-forest" / "model.skops"
    member.write_bytes(member.read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(BundleError, match=r"members/1-isolation-forest/model\.skops.*sha256 mismatch|sha256 "
                                          r"mismatch.*members/1-isolation-forest"):
        read_bundle(copy_, PluginManager())


def test_detectors_alone_make_an_anomaly_ensemble(tmp_path: Path) -> None:
    train = ensemble(["isolation-forest", "sklearn"], combine="rank-max")
    train["sklearn"] = {"estimator": "sklearn.covariance.EllipticEnvelope", "task": "anomaly",
                        "params": {"random_state": 0, "support_fraction": 0.9}}
    del train["xgboost"]
    path = project(tmp_path / "p", train)
    out = invoke(["run", "--json", "--quiet"], path).assert_ok().json
    shown = invoke(["models", "show", f"{MODEL}:1", "--json"], path).assert_ok().json
    assert shown["task"] == "anomaly" and out["versions"][0]["threshold"] is not None
    model = loaded(path)
    predictions = model.predict(monitored())
    meta = json.loads((model.path / "ensemble.json").read_text())
    features = model.transform(monitored()).frame.loc[predictions.index]
    ranks = [ranks_by_hand(meta, i, -np.asarray(est.score_samples(features[list(cols)]), dtype="float64"))
             for i, (_, _, cols, est) in enumerate(model.estimator.members)]
    expected = centred(np.max(ranks, axis=0), meta["cut"])
    np.testing.assert_allclose(predictions["score"].to_numpy(dtype=float), expected, rtol=0, atol=1e-12)
    # the server's fast path composes the members' compiled predicts; EllipticEnvelope has none, so it replays
    from opsloop.errors import PluginCallError

    with pytest.raises(PluginCallError, match=r"ensemble member sklearn \(flavor sklearn\) has no fast predict"):
        model.plugins.first("compile_predict", model=model, threads=1)
    # with no supervised member the cut is the top 1% of the training rows: that share is above it
    train_share = float((model.predict(datasets_train())["score"] > 0.5).mean())
    assert 0.002 < train_share < 0.02, train_share


@pytest.mark.parametrize(("options", "message"), [
    ({"members": ["xgboost", "isolaton-forest"]},
     r"\[train\.ensemble\.members\].*isolaton-forest.*did you mean \"isolation-forest\""),
    ({"members": ["xgboost", "kfold"]}, r"\[train\.ensemble\.members\].*kfold.*does not implement the train hook"),
    ({"members": ["xgboost", "ensemble"]}, r"members.*cannot be a member of itself"),
    ({"members": ["xgboost"]}, r"members.*at least 2"),
    ({"members": ["xgboost", "isolation-forest"], "weights": [1.0]}, r"weights.*1 weight\(s\) for 2 members"),
    ({"members": ["xgboost", "isolation-forest"], "combine": "vote"}, r"combine"),
])
def test_a_wrong_ensemble_is_a_config_error_naming_the_key(tmp_path: Path, options: dict[str, Any],
                                                             message: str) -> None:
    path = project(tmp_path / "p", {"plugins": ["ensemble"], "ensemble": options})
    result = invoke(["config", "check"], path)
    output = result.stdout + result.stderr
    assert result.exit_code == 1 and "Traceback" not in output, output
    assert re.search(message, " ".join(output.split())), output


def test_a_members_own_options_are_checked_with_the_config(tmp_path: Path) -> None:
    train = ensemble(["xgboost", "isolation-forest"])
    train["isolation-forest"] = {"n_estimators": 0}
    result = invoke(["config", "check"], project(tmp_path / "p", train))
    output = result.stdout + result.stderr
    assert result.exit_code == 1 and "[train.isolation-forest.n_estimators] wrong value" in output, output
