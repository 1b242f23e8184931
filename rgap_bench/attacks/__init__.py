"""Attack plugins: each takes the global model and a `ClientUpdate` and returns a `Reconstruction`."""
