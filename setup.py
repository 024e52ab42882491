"""Which packages featurebeam ships; all other metadata lives in pyproject.toml.

Dataflow's ``--setup_file`` points here: the launcher builds an sdist from this file and every worker installs
it, so a package left out of this list is missing on the workers (tests/pipeline/extract/test_dataflow.py proves it).
"""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"])

setup(packages=PACKAGES, include_package_data=False)  # modules of the listed packages, nothing else
