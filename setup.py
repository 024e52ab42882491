"""Packaging shim for Dataflow's ``--setup_file``: workers get ``pipeline`` and ``transforms`` from it.

All metadata lives in pyproject.toml; this file only lets Beam build the sdist it stages.
"""

from setuptools import setup

setup()
