"""The plugin's OU metrics (robustness attacks), registered in OU's ``METRICS_REGISTRY``."""
