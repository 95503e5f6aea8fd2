"""Deploy tests: the service harness of tests/service, loaded from its conftest (not importable as a module)."""

from __future__ import annotations

import importlib.util
import sys

from deploy_support import ROOT

_spec = importlib.util.spec_from_file_location("dgr2_service_harness", ROOT / "tests" / "service" / "conftest.py")
_harness = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
shared_store, h, _no_service_env, _one_torch_thread = (  # re-exported as fixtures of this package
    _harness.shared_store, _harness.h, _harness._no_service_env, _harness._one_torch_thread)
