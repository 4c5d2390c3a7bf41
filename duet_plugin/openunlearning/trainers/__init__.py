"""OU trainer classes of the plugin, one method per file; every concrete subclass of the shared base
(``base.DistillationTrainer``) is registered in OU under its class name."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def plugin_trainers() -> dict[str, Any]:
    """Import every module of this package and return the plugin's trainers by class name (the base collects them
    as they are defined, so a trainer defined elsewhere, e.g. in a user's module imported first, is included)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    from duet_plugin.openunlearning.trainers.base import PLUGIN_TRAINERS

    return dict(PLUGIN_TRAINERS)
