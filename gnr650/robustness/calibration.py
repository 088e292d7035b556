"""Calibration of a classifier's probabilities: ECE, NLL, Brier score, reliability bins, temperature scaling.

ECE is torchmetrics' (``multiclass_calibration_error``, top-1 confidence, ``ECE_BINS`` equal-width bins, L1), as
Guo et al. (2017) define it; NLL and Brier are one line each on the logits; temperature scaling (Guo et al. 2017)
fits one scalar on the validation split's logits, which leaves every prediction, so the accuracy, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15


def calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """Accuracy, ECE, NLL (mean, nats) and Brier score (mean over images of the squared distance between the
    probability vector and the one-hot label, 0 to 2) of ``logits / temperature``."""
    logits = logits.double() / temperature
    probs = logits.softmax(1)
    k = logits.shape[1]
    return {
        "acc": float((logits.argmax(1) == labels).double().mean()),
        "ece": float(multiclass_calibration_error(probs, labels, k, n_bins=ECE_BINS, norm="l1")),
        "nll": float(F.cross_entropy(logits, labels)),
        "brier": float((probs - F.one_hot(labels, k).double()).pow(2).sum(1).mean()),
    }


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, list]:
    """Per equal-width confidence bin (``ECE_BINS`` of them): its image count, mean top-1 confidence and accuracy
    (None for an empty bin). Their count-weighted mean gap |accuracy - confidence| is the ECE."""
    probs = (logits.double() / temperature).softmax(1)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    # Bin b holds confidences in [b/B, (b+1)/B), as torchmetrics bins them (a confidence of exactly 1: the last).
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    bins = (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS)
    conf_sum = torch.zeros(ECE_BINS, dtype=torch.float64).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(ECE_BINS, dtype=torch.float64).index_add_(0, bins, correct)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count)],
        "accuracy": [float(a / n) if n else None for a, n in zip(acc_sum, count)],
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of ``logits / T`` (L-BFGS on log T, in float64). Gradients on even
    inside Lightning's test loop, which runs under inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, labels = logits.double().clone(), labels.clone()
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp())
