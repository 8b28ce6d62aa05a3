import sys

from gepalib.cli import main

sys.exit(main())
