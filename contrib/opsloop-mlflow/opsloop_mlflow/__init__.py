"""opsloop-mlflow: opsloop runs logged to MLflow, versions and aliases mirrored into its model registry.

The plugin is `opsloop_mlflow.tracking` (entry point `mlflow-tracking`), an
observer: it implements only `on_*` hooks and `plugin_options`. MLflow is
imported when the first hook runs, never when opsloop starts.
"""
