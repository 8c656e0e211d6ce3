"""The merge's stages, in the order engine.py runs them: plan, span (with stream), commits,
finish. Each is a module with a small typed interface: frozen inputs (the request, the
plan, one span's work), the run's report (MergeMetrics) filled in as it goes."""
