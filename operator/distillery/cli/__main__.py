"""`python -m distillery.cli`: what the stage pods run (`torchrun -m distillery.cli train`)."""

import sys

from distillery.cli.main import main

sys.exit(main())
