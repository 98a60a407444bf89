import sys

from gibsey.cli import main

sys.exit(main())
