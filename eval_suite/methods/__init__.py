"""The measurement declarations, one family per module; importing this package declares all of them.

Every module here calls :func:`eval_suite.registry.declare` with its :class:`~eval_suite.registry.Measure`
entries (or a :class:`~eval_suite.registry.MeasureFamily`); the package imports each module it holds, so a new
method is a new module and nothing else. Modules import torch inside their functions: the command line's
``--help`` lists the declarations without loading a model library.
"""

import importlib
import pkgutil

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
