"""`python -m aggregator` is the same as `fedseal-aggregator`."""

import sys

from aggregator._cli import main

sys.exit(main())
