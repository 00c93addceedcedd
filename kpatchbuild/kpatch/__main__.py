"""``python -m kpatchbuild.kpatch``: the ``kpatch`` command (what the boot unit runs)."""

import sys

from kpatchbuild.kpatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
