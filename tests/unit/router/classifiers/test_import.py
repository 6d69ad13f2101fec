"""Importing the package must stay cheap: no model, torch, Presidio or spaCy load."""

from __future__ import annotations

import subprocess
import sys


def test_import_loads_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import mixroute.router.classifiers as c\n"
        "heavy = [m for m in ('torch', 'transformers', 'presidio_analyzer', 'spacy', 'sklearn')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
