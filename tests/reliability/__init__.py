"""Reliability campaigns: hostile packages and images, tampering, injected faults and
patching under load, each bounded here and run at full scale by ``figures``."""
