"""`opsloop deploy status` and `opsloop deploy remove`: the deploy_status and undeploy hooks of the built-in
deploy targets (batch, local-http), on real runs of the small telemetry set."""

from __future__ import annotations

import types

import pytest
from opsloop import hookimpl
from opsloop.errors import PluginLoadError
from opsloop.manager import PluginManager
from opsloop.types import DeploymentStatus


def test_a_target_implementing_deploy_status_and_undeploy_loads_and_is_called():
    def deploy_status(model_name, options, run):
        return DeploymentStatus(target="t", model=model_name, deployed=False)

    def undeploy(model_name, run):  # fewer arguments than the spec: pluggy passes only those named
        return DeploymentStatus(target="t", model=model_name, deployed=False, details={"removed": []})

    plugin = types.SimpleNamespace(deploy_status=hookimpl(deploy_status), undeploy=hookimpl(undeploy))
    pm = PluginManager(known={}, conflicts={})
    pm.register(plugin, "t")
    assert pm.call("t", "deploy_status", model_name="m", options=None, run=None).model == "m"
    assert pm.call("t", "undeploy", model_name="m", options=None, run=None).details == {"removed": []}


def test_a_misspelt_undeploy_is_refused_when_the_plugin_loads():
    plugin = types.SimpleNamespace(undeploy_model=hookimpl(lambda model_name: None))
    with pytest.raises(PluginLoadError, match="undeploy_model"):
        PluginManager(known={}, conflicts={}).register(plugin, "t")
