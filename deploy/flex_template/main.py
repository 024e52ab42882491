"""Flex Template entry point: the image's FLEX_TEMPLATE_PYTHON_PY_FILE (see pipeline/extract/flex_template.py)."""

import sys

from pipeline.cli import main
from pipeline.extract.flex_template import launcher_argv

try:
    argv = launcher_argv(sys.argv[1:])
except ValueError as e:
    print(f"featurebeam flex template: error: {e}", file=sys.stderr)
    sys.exit(2)
sys.exit(main(argv))
