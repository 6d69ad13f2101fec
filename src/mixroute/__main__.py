import sys

from mixroute.cli import main

sys.exit(main())
