"""duet-plugin's Hydra plugin package: Hydra walks hydra_plugins.* (see duet_plugin_searchpath.py)."""
