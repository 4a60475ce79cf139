"""``python -m corral.compute``: a computation's worker process (started by the dispatcher)."""

import sys

from corral.compute.worker import main

sys.exit(main())
