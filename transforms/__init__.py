"""Beam transforms and the pure functions under them; importing the package readies object storage access."""

from transforms.storage import adopt_storage_options, use_storage_emulator

use_storage_emulator()
adopt_storage_options()
