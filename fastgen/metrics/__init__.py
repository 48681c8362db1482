"""Generative-model metrics: Fréchet distance (FID) with streaming statistics, Inception Score, and the
feature extractors behind them (Inception-v3 as pytorch-fid defines it; a bundled digits classifier)."""
from fastgen.metrics.digits import DigitsFeatureExtractor
from fastgen.metrics.fid import (
    FeatureStats,
    FrechetDistance,
    fid_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
)
from fastgen.metrics.inception import InceptionV3FID, default_inception_weights_path, load_inception_weights
from fastgen.metrics.inception_score import inception_score, inception_score_from_images

__all__ = ["DigitsFeatureExtractor", "FeatureStats", "FrechetDistance", "InceptionV3FID",
           "default_inception_weights_path", "fid_from_stats", "frechet_distance", "inception_score",
           "inception_score_from_images", "load_inception_weights", "load_stats", "save_stats"]
