"""`python -m uld.theory`: the same as `uld theory`."""

import sys

from uld.theory.report import main

sys.exit(main())
