"""``python -m federation.cli``: how :func:`federation.ops.launcher.fed_command` starts every daemon."""

import sys

from federation.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
