"""Attack logic behind the robustness metrics (framework-free; one attack family per module)."""
