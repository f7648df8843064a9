"""opsloop-pyod: PyOD's unsupervised outlier detectors as opsloop trainers.

Entry points (group `opsloop`), one per detector so that an ensemble can
combine them: `pyod-ecod`, `pyod-copod`, `pyod-hbos`, `pyod-iforest`
(modules `opsloop_pyod.ecod`, ...). All train without labels (task
`"anomaly"`) and save with the `pyod` flavor (`opsloop_pyod._flavor`): JSON
and NumPy arrays, or skops with trusted scikit-learn types for the forest;
never pickle. Scores are inductive: a row's score never depends on the other
rows of its request (`opsloop_pyod._scoring`).

PyOD is imported only when a detector is fitted.
"""

__version__ = "0.1.0"
