"""Recommender models built from an Architecture."""
