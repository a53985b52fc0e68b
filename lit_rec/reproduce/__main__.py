"""`python -m lit_rec.reproduce`: see `lit_rec.reproduce`."""

import sys

from lit_rec.reproduce.cli import main

sys.exit(main())
