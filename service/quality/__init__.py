"""Sample quality: a Fashion-MNIST feature extractor and FID / precision-recall / class accuracy on it."""
