"""Real models the project can fetch from a package index and convert for OpenUnlearning."""
