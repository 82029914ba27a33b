"""The Prefect side: the retraining flow, its deployments, and how it runs the DVC stages."""
