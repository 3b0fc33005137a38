"""Where the project's data folders are: the checkout's, or the copy a wheel installs under <prefix>/share."""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
# setup.cfg's [options.data_files] puts schemas/ and migrations/ here when the project is installed from a wheel
INSTALLED = Path(sys.prefix) / "share" / "somaagent01"


def folder(name: str) -> Path:
    """``schemas`` or ``migrations``: the checkout's folder when running from one, else the installed copy."""
    for base in (CHECKOUT, INSTALLED):
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"{name}/ is neither in {CHECKOUT} (a checkout) nor in {INSTALLED} (an installed wheel)")
