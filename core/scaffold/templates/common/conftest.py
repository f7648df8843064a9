"""The opsloop testing kit's fixtures (opsloop_project, register_plugin, hook_recorder, make_plugin_dist)."""

pytest_plugins = ["opsloop.testing"]
