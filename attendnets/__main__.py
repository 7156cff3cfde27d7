import sys

from attendnets.cli import main

sys.exit(main())
