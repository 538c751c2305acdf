"""The training engine: Recipe, data, augmentation, models, optimisers and the pure loop."""
