"""MLflow: the shared names, the client, the registry probe, the registered generator and the champion gate."""
