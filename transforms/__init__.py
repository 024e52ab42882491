"""Beam transforms and the pure functions under them; importing the package readies object storage access."""

from transforms.storage import use_storage_emulator

use_storage_emulator()
