"""The embedded backbones: exact Keras ports of published weights that install offline, each with a reference
test. A port module holds its architecture, its ``resolve()`` (where its weights are, its preprocessing) and
its ``build(spec, layers)``."""
