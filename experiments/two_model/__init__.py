"""The two-model MNIST example of the paper: ``protocol`` (models, training, importances), ``report`` (table,
figure, results JSON)."""
