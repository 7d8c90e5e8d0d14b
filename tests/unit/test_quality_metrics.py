"""FID, improved precision/recall and class accuracy on small synthetic feature sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from service.quality.classifier import ClassifierConfig, FashionClassifier
from service.quality.metrics import (
    FeatureSetError,
    class_accuracy,
    extract_features,
    frechet_distance,
    precision_recall,
)


def _features(n: int = 400, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """n samples of one fixed correlated Gaussian with unequal variances; `seed` picks the samples."""
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(1234)) / dim**0.5
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) @ mixing + 3.0


def _reference_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The FID formula via symmetric eigen-decompositions: Tr (S_a S_b)^1/2 = Tr (S_a^1/2 S_b S_a^1/2)^1/2."""
    x, y = a.double().numpy(), b.double().numpy()
    s_a, s_b = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    mean_term = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    return mean_term + float(np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_fid_of_a_set_with_itself_is_zero() -> None:
    a = _features()
    scale = float(torch.cov(a.T.double()).trace())
    assert 0.0 <= frechet_distance(a, a) < 1e-6 * scale


def test_fid_grows_with_a_shift_and_is_the_squared_mean_distance() -> None:
    a = _features()
    fids = [frechet_distance(a, a + shift) for shift in (0.1, 0.5, 1.0)]
    assert 0 < fids[0] < fids[1] < fids[2]
    # Equal covariances leave only |mu_a - mu_b|^2 = D * shift^2.
    assert fids[2] == pytest.approx(16 * 1.0**2, rel=1e-6)


def test_fid_matches_an_independent_reference() -> None:
    a, b = _features(seed=0), _features(seed=1) * 1.3
    assert frechet_distance(a, b) == pytest.approx(_reference_fid(a, b), rel=1e-6)


def test_fid_rejects_mismatched_or_tiny_sets() -> None:
    with pytest.raises(FeatureSetError):
        frechet_distance(_features(dim=16), _features(dim=8))
    with pytest.raises(FeatureSetError):
        frechet_distance(_features(n=1), _features())


def test_non_finite_features_are_refused_not_crashed_on() -> None:
    real, fake = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    fake[3, 1], fake[7, 0] = float("nan"), float("inf")
    with pytest.raises(FeatureSetError, match="2 of 20 fake feature vectors are not finite"):
        frechet_distance(real, fake)
    with pytest.raises(FeatureSetError, match="not finite"):
        precision_recall(real, fake, k=3)


def test_precision_recall_of_identical_sets_is_one() -> None:
    a = _features(n=300)
    assert precision_recall(a, a.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero() -> None:
    a = _features(n=300)
    assert precision_recall(a, a + 100.0, k=3) == (0.0, 0.0)


def test_precision_counts_fake_samples_inside_the_real_manifold() -> None:
    real = _features(n=300, seed=0)
    fake = torch.cat([_features(n=100, seed=1), _features(n=100, seed=2) + 100.0])
    precision, recall = precision_recall(real, fake, k=3)
    assert 0.3 < precision <= 0.5  # the far half is outside; most of the near half inside
    assert recall > 0.5  # the near half of the fakes covers the real set


def test_precision_recall_does_not_depend_on_chunking() -> None:
    real, fake = _features(n=200, seed=0), _features(n=150, seed=1) * 1.2
    assert precision_recall(real, fake, k=5, chunk_size=7) == precision_recall(
        real, fake, k=5, chunk_size=4096
    )


def test_precision_recall_needs_more_than_k_samples() -> None:
    with pytest.raises(FeatureSetError, match="at least 4"):
        precision_recall(_features(n=3), _features(n=10), k=3)


class _PixelOracle(nn.Module):
    """Predicts the class written into pixel (0, 0): a classifier whose accuracy is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def test_class_accuracy_on_a_toy_classifier() -> None:
    labels = torch.arange(10).repeat(10)
    images = torch.zeros(100, 1, 28, 28)
    images[:, 0, 0, 0] = labels.float()
    images[:30, 0, 0, 0] = (labels[:30] + 1) % 10  # 30 deliberately wrong
    assert class_accuracy(_PixelOracle(), images, labels, batch_size=16) == pytest.approx(0.7)


def test_features_shape_and_training_mode_kept() -> None:
    torch.manual_seed(0)
    model = FashionClassifier(ClassifierConfig(channels=(8, 16), feature_dim=32))
    images = torch.rand(10, 1, 28, 28) * 2 - 1
    features = extract_features(model, images, batch_size=4)
    assert features.shape == (10, 32) and model.training
    assert torch.allclose(features, model.eval().features(images), atol=1e-5)
