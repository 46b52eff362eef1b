"""Online and hybrid prediction service (``python -m serving.app``)."""
