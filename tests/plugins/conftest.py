"""The store tests' shared suite (store_contract.py) as one module for the whole session, importable as
`store_contract` by every module here: its PostgreSQL server is started once, and its fixtures are shared."""

import importlib.util
import sys
from pathlib import Path

if "store_contract" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("store_contract", Path(__file__).with_name("store_contract.py"))
    assert _spec and _spec.loader
    sys.modules["store_contract"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["store_contract"])
