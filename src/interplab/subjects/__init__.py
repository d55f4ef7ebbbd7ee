"""Subjects: what interplab studies. Importing this package registers every built-in subject."""

from interplab.subjects import lm, maxofk, mlp, synthetic, tms  # noqa: F401  (registration)
from interplab.subjects.base import SUBJECTS, Subject, load_subject
from interplab.subjects.sites import HookPoint, Site, canonical_sites

__all__ = ["SUBJECTS", "Subject", "load_subject", "HookPoint", "Site", "canonical_sites"]
