"""`python -m auditor` is the same as `fedseal-audit`."""

import sys

from auditor._cli import main

sys.exit(main())
