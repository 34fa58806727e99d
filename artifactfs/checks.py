"""What one ``artifactfs doctor`` check found: made by :mod:`artifactfs.doctor` and by each
registry backend's own checks (:data:`artifactfs.registry.BACKENDS`)."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    found: str
    fix: str = ""  # what to do, when the status is not OK
