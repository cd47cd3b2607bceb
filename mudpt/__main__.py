import sys

from mudpt.cli import main

sys.exit(main())
