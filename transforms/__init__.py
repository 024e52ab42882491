"""Beam transforms and the pure functions under them, by stage: ``read/`` -> ``decode/`` -> ``embed/`` ->
``write/``; ``schema`` is the output contract and ``records`` the elements passed between stages. Importing
changes no global state (``transforms.read.storage.ready_storage`` readies object storage where work starts).
"""
