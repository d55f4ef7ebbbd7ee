"""Subjects: what interplab studies. Importing this package registers every built-in subject.

Every module of this package is imported here, so a subject registers itself by existing.
"""

import importlib
import pkgutil

from interplab.subjects.base import SUBJECTS, Subject, load_subject
from interplab.subjects.sites import HookPoint, Site, canonical_sites

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # registration

__all__ = ["SUBJECTS", "Subject", "load_subject", "HookPoint", "Site", "canonical_sites"]
