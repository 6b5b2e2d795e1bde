"""``python -m dogpile``: the stampede demonstration (see ``dogpile.demo``)."""

import sys

from .demo import main

if __name__ == "__main__":
    sys.exit(main())
