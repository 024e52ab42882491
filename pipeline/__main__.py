import sys

from pipeline.cli import run

sys.exit(run())
