"""The plugin's OU evaluators, registered in OU's ``EVALUATOR_REGISTRY``."""
