import sys

from lowrank_core.cli import main

sys.exit(main())
