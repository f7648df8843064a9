"""`opsloop tune`'s study beside the registry, in both stores: SQLite beside registry.db, a schema of the
PostgreSQL store's database; an interrupted (or repeated) search resumes from it (issue 14, item 1)."""

from __future__ import annotations

import pytest

import store_contract  # noqa: E402 - registered by conftest.py, shared by the store tests

optuna = pytest.importorskip("optuna")


@pytest.mark.parametrize("backend_id", ["local", "postgres"])
def test_a_study_is_kept_beside_the_registry_and_resumed(backend_id, tmp_path):
    from opsloop.plugins.local_store import LocalStore

    if backend_id == "postgres":
        backend = store_contract.PostgresBackend(store_contract.require_pg())
        store = backend.open(tmp_path / "bundles")
    else:
        backend, store = None, LocalStore(tmp_path / ".opsloop")
    try:
        url = store.tuning_storage()
        assert url.startswith("postgresql+psycopg://" if backend else "sqlite:///")
        space = {"x": optuna.distributions.FloatDistribution(-10, 10)}
        for round_ in (1, 2):  # a second process would open the same URL: the trials are there
            storage = optuna.storages.RDBStorage(url)
            study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                        sampler=optuna.samplers.RandomSampler(seed=round_))
            study.optimize(lambda t: (t.suggest_float("x", -10, 10) - 2) ** 2, n_trials=3)
            assert len(study.trials) == 3 * round_
            assert all(t.distributions == space for t in study.trials)
            storage.engine.dispose()
        # the registry itself is untouched by the study's tables
        assert store.models() == []
    finally:
        store.close()
        if backend is not None:
            backend._execute(f"DROP SCHEMA IF EXISTS {backend.schema}_tuning CASCADE")
            backend.cleanup()
