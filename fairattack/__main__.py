"""`python -m fairattack ...` (and `torchrun ... -m fairattack run ...`): the fairattack command."""

import sys

from .cli import main

sys.exit(main())
