"""homerec serving: the FastAPI Home ranker."""
