"""Flex Template entry point: the image's FLEX_TEMPLATE_PYTHON_PY_FILE (see pipeline/extract/flex_template.py)."""

import sys

from pipeline.extract.flex_template import main

sys.exit(main())
