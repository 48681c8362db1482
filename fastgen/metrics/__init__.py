"""Generative-model metrics: Fréchet distance (FID) with streaming statistics, Inception Score."""
from fastgen.metrics.fid import (
    FeatureStats,
    FrechetDistance,
    fid_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
)

__all__ = ["FeatureStats", "FrechetDistance", "fid_from_stats", "frechet_distance", "load_stats", "save_stats"]
