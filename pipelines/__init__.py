"""Multi-stage pipelines that run the toolkit's own scripts end to end (the demo)."""
