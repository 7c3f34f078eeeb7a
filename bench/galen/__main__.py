"""``python -m bench.galen``: the whole Galen benchmark (see ``bench/galen/run.py``)."""

import sys

from bench.galen.run import main

sys.exit(main())
