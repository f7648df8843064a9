"""opsloop-dask: opsloop's XGBoost training and batch scoring on a Dask cluster.

Plugins (entry points in the group `opsloop`):

- `dask-xgboost` (`opsloop_dask.trainer`): the `xgboost` trainer's options and flavor, fitted with XGBoost's
  own Dask interface on an existing scheduler or a `LocalCluster` it starts.
- `dask-batch` (`opsloop_dask.batch`): a deploy target that scores partitioned Parquet on the cluster, one
  task per partition, with the previous rows of every series carried across partition boundaries.

`opsloop_dask.partitioned` fits preprocessing states over partitions (a prototype for partitioned data
beyond memory; see docs/contrib/dask.md).
"""
