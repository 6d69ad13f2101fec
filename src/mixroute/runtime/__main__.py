"""`python3 -m mixroute.runtime ls|watch|events|infra` (see main.py)."""

from __future__ import annotations

import sys

from mixroute.runtime.main import main

sys.exit(main())
