"""What composes the stages: cohort builders (``datasets/``) and experiment suites (``suites/``).

``adacomed-data`` is :mod:`.cli`, ``adacomed-eval`` is :mod:`.suites.cli`. The modules sat flat in this folder
before it was grouped; their old import paths (``adacomed.pipelines.demo``, ``...experiments``, ...) still
import the same module objects, so user scripts and pickled references keep working. Registering the aliases
costs one dict: nothing is imported until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# old module (as it was, flat in pipelines/) -> where it lives now
MOVED: dict[str, str] = {
    "demo": "datasets.demo",
    "demo_media": "datasets.demo_media",
    "demo_records": "datasets.demo_records",
    "mmist": "datasets.mmist",
    "from_table": "datasets.from_table",
    "prompts": "datasets.prompts",
    "mimic": "datasets.mimic.build",
    "mimic_cohort": "datasets.mimic.cohort",
    "mimic_media": "datasets.mimic.media",
    "mimic_sources": "datasets.mimic.sources",
    "mimic_summary": "datasets.mimic.summary",
    "mimic_timeseries": "datasets.mimic.timeseries",
    "mimic_variables": "datasets.mimic.variables",
    "evaluation": "suites.evaluation",
    "experiments": "suites.compare",
    "experiments_cli": "suites.cli",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``adacomed.pipelines.<old>`` to the module at its new path (one module object under two names)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module; exec_module swaps in the real one

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__.rpartition(".")[2]
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{MOVED[name]}")


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
