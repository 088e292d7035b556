"""Weighted k-NN (DINO): exact on separable features, the same votes as scikit-learn's, run like any strategy."""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from gnr650.finetune import StrategyError
from gnr650.finetune.knn import KNNBank, KNNClassifier
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


def test_k_equal_to_the_bank_votes_over_the_whole_bank():
    """k = bank size: a class's score is its share of exp(cos / T) over every train feature (by hand)."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[3.0, 0.0]])
    weights = torch.tensor([1.0, 0.0, 2**-0.5]).div(0.5).exp()  # cosines with the query, T = 0.5
    expected = torch.stack([weights[0], weights[1:].sum()]) / weights.sum()
    scores = KNNClassifier(2, k=3, temperature=0.5).fit(bank, labels)(query).exp()
    torch.testing.assert_close(scores[0], expected)


def test_defaults_are_dinos():
    knn = KNNClassifier(3)
    assert (knn.k, knn.temperature) == (20, 0.07)


@pytest.mark.parametrize(
    "k,temperature,message",
    [
        (0, 0.07, r"finetune.knn.k must be a positive integer \(got 0\)"),
        (-1, 0.07, r"knn.k must be a positive integer \(got -1\)"),
        (2.5, 0.07, r"knn.k must be a positive integer \(got 2.5\)"),
        (True, 0.07, r"knn.k must be a positive integer \(got True\)"),
        (20, 0, r"finetune.knn.temperature must be positive \(got 0\)"),
        (20, -0.1, r"knn.temperature must be positive \(got -0.1\)"),
    ],
)
def test_bad_k_or_temperature_is_refused_naming_the_setting(k, temperature, message):
    with pytest.raises(StrategyError, match=message):
        KNNClassifier(3, k=k, temperature=temperature)


def test_k_of_one_is_the_nearest_neighbours_label():
    bank, labels = torch.tensor([[1.0, 0.1], [0.1, 1.0]]), torch.tensor([1, 0])
    scores = KNNClassifier(2, k=1, temperature=1e-3).fit(bank, labels)(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert scores.argmax(1).tolist() == [1, 0]


def test_fitting_more_neighbours_than_features_is_refused():
    with pytest.raises(StrategyError, match=r"knn.k=4 is larger than the 3 train features"):
        KNNClassifier(2, k=4).fit(torch.randn(3, 2), torch.tensor([0, 1, 1]))


def test_a_bank_filled_in_inference_mode_still_passes_gradients():
    """The bank is filled during testing (inference mode); Grad-CAM later backpropagates through the k-NN head."""
    knn = KNNClassifier(2, k=2)
    with torch.inference_mode():
        knn.fit(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    query = torch.randn(2, 3, requires_grad=True)
    knn(query)[:, 0].sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_the_bank_is_rebuilt_not_saved():
    """Bank and labels are buffers kept out of the state dict: a fitted head's checkpoint loads into a fresh one."""
    fitted = KNNClassifier(2, k=2).fit(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    assert set(dict(fitted.named_buffers())) == {"bank", "labels"} and not fitted.state_dict()
    KNNClassifier(2, k=2).load_state_dict(fitted.state_dict())


class _Split:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)


@pytest.mark.parametrize("head", ["fc", "head.fc"])
def test_bank_callback_puts_the_classifier_in_place_of_the_head_over_every_train_feature(head):
    """The head (top-level or nested) becomes the k-NN classifier; its bank is the head-less network's features of
    all 5 train images, fed in batches of 2, in order."""
    fc = nn.Linear(4, 2)
    top = nn.Sequential(OrderedDict(fc=fc)) if "." in head else fc
    net = nn.Sequential(OrderedDict([("body", nn.Linear(3, 4)), (head.split(".")[0], top)]))
    images, labels = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    datamodule = SimpleNamespace(split=lambda name: _Split(images, labels), eval_batch_size=2)
    module = SimpleNamespace(net=net, preprocess=nn.Identity(), device=torch.device("cpu"))
    classifier = KNNClassifier(2, k=5)
    KNNBank(head, classifier, train_size=5).on_test_start(SimpleNamespace(datamodule=datamodule), module)
    assert net.get_submodule(head) is classifier
    with torch.no_grad():
        torch.testing.assert_close(classifier.bank, F.normalize(net.body(images), dim=1))
    assert torch.equal(classifier.labels, labels)


def test_k_equal_to_the_train_split_is_accepted():
    KNNBank("head", KNNClassifier(2, k=64), train_size=64)
