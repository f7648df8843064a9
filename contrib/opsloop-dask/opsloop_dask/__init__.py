"""opsloop-dask: opsloop's XGBoost training and batch scoring on a Dask cluster.

Plugins (entry points in the group `opsloop`):

- `dask-xgboost` (`opsloop_dask.trainer`): the `xgboost` trainer's options and flavor, fitted with XGBoost's
  own Dask interface on an existing scheduler or a `LocalCluster` it starts.
- `dask-batch` (`opsloop_dask.batch`): a deploy target that scores partitioned Parquet on the cluster, one
  task per partition, with the previous rows of every series carried across partition boundaries; it records
  what it wrote (`opsloop_dask.record`) for `opsloop deploy status` and `opsloop deploy remove`.
- `dask-parquet` (`opsloop_dask.source`): a `[data] source` of Parquet files read partition by partition,
  and opsloop's engine for Dask DataFrames (`map_partitions`, `opsloop_dask.engine`); `dask-xgboost` trains
  on the partitions (`opsloop_dask.partitioned_train`). See docs/contrib/dask.md.
"""
