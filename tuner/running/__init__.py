"""Running a tuning experiment: the tune()/resume() API, the run settings, the one Ray Tune
adapter (``trial``), searcher and scheduler registries, results, storage and clusters."""
