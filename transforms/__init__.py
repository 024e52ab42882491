"""Beam transforms and the pure functions under them, by stage: ``read/`` -> ``decode/`` -> ``embed/`` ->
``write/``; ``schema`` is the output contract and ``records`` the elements passed between stages. Importing
changes no global state (``transforms.process.ready_process`` readies a worker process where work starts).
"""
