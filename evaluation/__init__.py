"""homerec evaluation: ranking metrics, baselines, offline reports, drift."""
