"""``python -m fastlista``: the command line of :mod:`fastlista._cli`."""
import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
