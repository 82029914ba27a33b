"""Scoring generated images: the domain classifier, the Inception network, feature spaces, metrics with their data floors."""
