"""``python -m studies NAME [--quick] ...``: the same as ``ppgmm study``."""

import sys

from studies.runner import main

sys.exit(main())
