"""opsloop's built-in plugins, one module each.

Each is registered through opsloop's own entry points in the group `opsloop`
(see pyproject.toml), exactly as a third-party package registers its plugins,
and is imported only when a config selects it.
"""
