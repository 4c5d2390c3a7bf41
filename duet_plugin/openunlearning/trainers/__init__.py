"""OU trainer classes of the plugin (one method per file)."""
