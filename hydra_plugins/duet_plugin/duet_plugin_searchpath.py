"""Hydra SearchPathPlugin: inside OpenUnlearning, add duet-plugin's configs and register its components.

Hydra imports every module under ``hydra_plugins`` in every Hydra application, and only ImportError is
tolerated there, so this module does nothing at import time beyond defining the class, and the plugin is a no-op
in any Hydra app that is not OpenUnlearning.
"""

import warnings

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class DUETPluginSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from duet_plugin.openunlearning.registration import (
            RegistrationError,
            config_dir,
            framework_detected,
            register,
        )

        if not framework_detected():
            return
        # Appended: OU's own files keep priority on any name clash.
        search_path.append(provider="duet-plugin", path=f"file://{config_dir()}")
        try:
            register()
        except RegistrationError as err:  # keep OU's own commands working; say why ours are unavailable
            warnings.warn(f"duet-plugin components not registered: {err}", stacklevel=1)
