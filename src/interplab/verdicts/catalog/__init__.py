"""Every crux interplab decides, defined in one place: one module per experiment.

Importing this package registers them all in `interplab.verdicts.CRUXES` (every module here is
imported, so adding an experiment's cruxes is adding a file). Definitions are written before their
results are seen; see `interplab.verdicts.crux` for the rule on changing one.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # registration
