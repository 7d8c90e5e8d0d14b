"""Sample-quality metrics in a classifier's feature space: FID, improved precision/recall, class accuracy.

Every number depends on the feature extractor and the sample counts; report both beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from service.quality.classifier import FashionClassifier


class FeatureSetError(ValueError):
    """Feature or image sets that cannot be compared: too few samples, mismatched dimensions."""


class _Precomputed(nn.Module):
    """Passes already-extracted features through, so FID of feature tensors uses the same library path."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, BatchNorm running statistics) and no autograd; the previous mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _device(module: nn.Module) -> torch.device:
    """Where the module's weights live; the CPU for a module without any."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _check_sets(real: torch.Tensor, fake: torch.Tensor, min_samples: int) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise FeatureSetError(
            f"expected [N, D] feature sets of equal D, got {list(real.shape)} and {list(fake.shape)}"
        )
    if min(len(real), len(fake)) < min_samples:
        raise FeatureSetError(
            f"need at least {min_samples} samples per set, got {len(real)} real, {len(fake)} fake"
        )
    for name, features in (("real", real), ("fake", fake)):
        # LAPACK inside the FID's eigen-decomposition can crash the process on NaN input, so a model whose
        # samples overflowed (e.g. an unconstrained variance head far out of range) fails here instead.
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        if bad:
            raise FeatureSetError(
                f"{bad} of {len(features)} {name} feature vectors are not finite (NaN/inf); "
                "check that the samples are finite images"
            )


def _fid_metric(feature: nn.Module) -> FrechetInceptionDistance:
    # torchmetrics accepts any nn.Module as the extractor and then needs neither torch-fidelity nor a
    # download; it accumulates mean and covariance in float64 and takes the matrix square root's trace
    # from the eigenvalues of sigma_real @ sigma_fake (agrees with scipy.linalg.sqrtm to 1e-12, and with a
    # symmetric eigen-decomposition in tests/unit/test_quality_metrics.py).
    return FrechetInceptionDistance(feature=feature, reset_real_features=True)


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2) (Heusel et al. 2017), in float64."""
    _check_sets(real_features, fake_features, min_samples=2)
    metric = _fid_metric(_Precomputed(real_features.shape[1]))
    metric.update(real_features.detach().cpu(), real=True)
    metric.update(fake_features.detach().cpu(), real=False)
    # Equal sets give about -1e-12 from rounding; the distance itself is never negative.
    return max(float(metric.compute()), 0.0)


def extract_features(
    classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Penultimate activations [N, D] of images [N, 1, 28, 28] in [-1, 1], on the classifier's device."""
    device = _device(classifier)
    with _evaluating(classifier):
        parts = [classifier.features(batch.to(device)) for batch in images.split(batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, classifier.num_features, device=device)


def class_accuracy(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Fraction of images whose argmax logit is their label (for samples: the class they were asked for)."""
    if len(images) != len(labels) or len(images) == 0:
        raise FeatureSetError(
            f"need as many labels as images (and some), got {len(labels)} and {len(images)}"
        )
    device = _device(classifier)
    correct = 0
    with _evaluating(classifier):
        for batch, target in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            correct += int((classifier(batch.to(device)).argmax(dim=1) == target.to(device)).sum())
    return correct / len(images)


def _kth_radii(features: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = [
        # k + 1 smallest: the point itself is at distance 0 and comes first.
        torch.cdist(chunk, features).topk(k + 1, dim=1, largest=False).values[:, k]
        for chunk in features.split(chunk_size)
    ]
    return torch.cat(radii)


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3, chunk_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-3) with k-NN manifold estimates.

    precision: fraction of fake samples inside some real sample's k-NN ball; recall: fraction of real
    samples inside some fake sample's ball. Distances are float64 and computed a chunk of rows at a time,
    so 10k x 10k sets need about chunk_size x N x 8 bytes at once. Written here because torchmetrics and
    torch-fidelity offer it only with their fixed Inception/VGG extractors, not for given feature tensors.
    """
    _check_sets(real_features, fake_features, min_samples=k + 1)
    real, fake = real_features.double(), fake_features.double()
    real_radii, fake_radii = _kth_radii(real, k, chunk_size), _kth_radii(fake, k, chunk_size)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    real_inside = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    # One pass over the fake x real distances serves both directions.
    for start in range(0, len(fake), chunk_size):
        dist = torch.cdist(fake[start : start + chunk_size], real)
        fake_inside[start : start + chunk_size] = (dist <= real_radii[None, :]).any(dim=1)
        real_inside |= (dist <= fake_radii[start : start + chunk_size, None]).any(dim=0)
    return float(fake_inside.double().mean()), float(real_inside.double().mean())
