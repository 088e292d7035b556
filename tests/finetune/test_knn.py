"""Weighted k-NN (DINO): exact on separable features, the same votes as scikit-learn's, run like any strategy."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from gnr650.finetune import StrategyError
from gnr650.finetune.knn import KNNClassifier
from gnr650.train import train
from tests.helpers import make_cfg

SMOKE = ["debug=smoke", "model=vit_ti16", "trainer.max_epochs=1", "logger=none", "callbacks=none"]


def _clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 5 + 1  # all positive: cosine alone must separate them
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_linearly_separable_features_are_classified_perfectly():
    bank, bank_labels = _clusters(30, 5, 16, 0.5, seed=0)
    queries, labels = _clusters(20, 5, 16, 0.5, seed=1)
    knn = KNNClassifier(5, k=20, temperature=0.07).fit(bank, bank_labels)
    assert torch.equal(knn(queries).argmax(1), labels)


def test_votes_match_scikit_learn_on_overlapping_features():
    bank, bank_labels = _clusters(30, 4, 8, 3.0, seed=0)
    queries, _ = _clusters(25, 4, 8, 3.0, seed=1)
    ours = KNNClassifier(4, k=7, temperature=0.1).fit(bank, bank_labels)(queries).exp()
    reference = KNeighborsClassifier(7, metric="cosine", weights=lambda d: np.exp((1 - d) / 0.1))
    theirs = reference.fit(bank.numpy(), bank_labels.numpy()).predict_proba(queries.numpy())
    torch.testing.assert_close(ours, torch.from_numpy(theirs).float(), atol=1e-4, rtol=0)


def test_knn_reports_like_the_other_strategies(tmp_path):
    knn = train(make_cfg(SMOKE + ["finetune=knn"], tmp_path / "knn"))
    last = train(make_cfg(SMOKE + ["finetune=last", "trainer.max_epochs=0"], tmp_path / "last"))
    assert knn["status"] == "completed" and knn["params"]["trainable"] == 0 and knn["timing"]["fit_s"] == 0
    assert set(knn["metrics"]) == set(last["metrics"])


def test_k_larger_than_the_train_split_is_refused_before_any_work(tmp_path):
    with pytest.raises(StrategyError, match=r"knn.k=1000 is larger than the train split \(64 images\)"):
        train(make_cfg(SMOKE + ["finetune=knn", "finetune.knn.k=1000"], tmp_path))
