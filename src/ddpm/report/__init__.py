"""The run report: its figures, the sample grid, and the markdown and HTML it is written as."""
