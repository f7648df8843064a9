"""COPOD: copula-based outlier scores from each feature's empirical CDF; parameter-free, no labels needed.

The `pyod-copod` trainer fits PyOD's `COPOD` on every feature column (a target
column, if present, is never read when fitting). Li et al., COPOD: Copula-Based Outlier Detection (ICDM 2020). PyOD recommends ECOD, its refined successor.

Scoring is inductive (see `opsloop_pyod._scoring`): PyOD's own COPOD
`decision_function` ranks new rows together with the training rows, so a
row's score would depend on the rest of its batch; here each row is placed in
the training rows' per-feature ECDFs with PyOD's formulas, as PyOD scores a
row that comes alone. Flavor `pyod` (`opsloop_pyod._flavor`): JSON and
NumPy arrays, no pickle.

Options (`[train.pyod-copod]`): contamination; see `Options`.
"""

from __future__ import annotations

from opsloop import hookimpl

from opsloop_pyod._ecdf import Options, trainer
from opsloop_pyod._flavor import compile_predict, load_model, save_model

__all__ = ["Options", "compile_predict", "load_model", "plugin_options", "save_model", "train"]
PLUGIN = "pyod-copod"


@hookimpl
def plugin_options() -> type:
    return Options


train = hookimpl(trainer(PLUGIN, "copod", "pyod.models.copod.COPOD"))
