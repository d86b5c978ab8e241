"""`python -m fairattack.cli ...`: the same command as `python -m fairattack ...`."""

import sys

from .main import main

sys.exit(main())
