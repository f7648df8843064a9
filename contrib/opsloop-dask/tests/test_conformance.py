"""`dask-batch` passes opsloop's deploy-target conformance suite (docs/conformance.md) on a real Dask LocalCluster
that the plugin starts (two workers as threads of the test process)."""

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

from opsloop.testing.conformance import DeploySuite  # noqa: E402 - the kit


class TestDaskBatch(DeploySuite, plugin="dask-batch",
                    options={"workers": 2, "threads_per_worker": 1, "processes": False}): pass
