"""The change-analysis maths against independent computations: linear CKA, attention distance, ridge probes,
deletion/insertion faithfulness, probe-set choice."""

from __future__ import annotations

import dataclasses
import math

import pytest
import timm
import torch
import torchvision
from torch import nn

from gnr650.finetune.knn import KNNClassifier
from gnr650.interpret import analysis as an
from gnr650.interpret import faithfulness as faith
from gnr650.interpret.change import ChangeAnalysis


def cka_by_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al. 2019, eq. (1)-(3): HSIC of the linear Gram matrices with the centring matrix H."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram_x, gram_y = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(gram_x, gram_y) / torch.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y)))


def test_linear_cka_matches_the_hsic_formula_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = x @ torch.randn(12, 7, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        40, 7, generator=g, dtype=torch.float64
    )
    value = an.linear_cka(x, y)
    assert value == pytest.approx(cka_by_hsic(x, y), abs=1e-12)
    assert 0.05 < value < 0.999  # a real test case, neither trivial end
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert an.linear_cka(x @ q, y) == pytest.approx(value, abs=1e-12)  # orthogonal transform
    assert an.linear_cka(3.7 * x, 0.2 * y) == pytest.approx(value, abs=1e-12)  # isotropic scaling
    assert an.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert an.linear_cka(x, x @ torch.diag(torch.arange(1.0, 13.0, dtype=torch.float64))) < 1 - 1e-3  # not invariant


def test_mean_attention_distance_of_uniform_attention_is_the_mean_patch_distance():
    """2x2 patches of 16 px, uniform attention (CLS included, then renormalised over patches): every query
    sees distances 0, 16, 16 and 16*sqrt(2) with weight 1/4."""
    attn = torch.full((1, 3, 5, 5), 1 / 5)
    distances = an.patch_distances((2, 2), (16.0, 16.0))
    result = an.mean_attention_distance(attn, 1, distances)
    assert result.shape == (1, 3)
    torch.testing.assert_close(result, torch.full((1, 3), 16 * (2 + math.sqrt(2)) / 4, dtype=torch.float64))
    assert an.cls_entropy(attn, 1)[0, 0].item() == pytest.approx(math.log(4))


def test_ridge_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(20)
    onehot = nn.functional.one_hot(labels, 4).double().repeat(1, 15)  # 60 redundant signal features
    signal = 3 * onehot + 0.5 * torch.randn(80, 60, generator=g, dtype=torch.float64)
    features = torch.cat([signal, torch.randn(80, 10, generator=g, dtype=torch.float64)], dim=1)  # d > n: dual form
    fit, score = an.probe_halves(labels)
    assert sorted(torch.bincount(labels[fit]).tolist()) == [10] * 4 and set(fit.tolist()).isdisjoint(score.tolist())
    assert an.ridge_probe_accuracy(features[fit], labels[fit], features[score], labels[score], 4) == 1.0
    noise = torch.randn(80, 6, generator=g, dtype=torch.float64)
    assert an.ridge_probe_accuracy(noise[fit], labels[fit], noise[score], labels[score], 4) < 0.6


def test_probe_indices_are_class_balanced_seeded_and_checked():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 20)
    idx = an.probe_indices(labels, 12, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 4] and idx.unique().numel() == 12
    assert torch.equal(idx, an.probe_indices(labels, 12, seed=3))
    assert not torch.equal(idx, an.probe_indices(labels, 12, seed=4))
    assert sorted(an.probe_indices(labels, 1000, seed=0).tolist()) == list(range(36))  # all when too many
    with pytest.raises(ValueError, match="probe_images"):
        an.probe_indices(labels, 0, seed=0)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="analysis.probe_images must be a positive"):
            ChangeAnalysis("unused", probe_images=bad)


class OnePatchModel(nn.Module):
    """Class 0's logit is 4x the mean of patch 3 (bottom right of a 2x2 grid); class 1's is 0."""

    def forward(self, x):
        logit = 4 * x[:, :, 4:, 4:].mean(dim=(1, 2, 3))
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def test_deletion_with_the_true_map_is_lower_than_random_and_insertion_higher():
    model = OnePatchModel()
    x = torch.ones(8, 1, 8, 8)

    def predict(inputs):
        return model(inputs).softmax(1)

    pointing = torch.zeros(8, 2, 2)
    pointing[:, 1, 1] = 1.0  # the map points at the one patch the model uses
    orders = {"true": faith.ranking(pointing), "random": faith.random_ranking(8, 4, seed=0)}
    curves = faith.perturbation_curves(predict, x, orders, (2, 2), steps=4)
    true_curves, random_curves = curves["true"], curves["random"]
    for method, order in orders.items():  # the same curves as with each order alone
        alone = faith.perturbation_curves(predict, x, {method: order}, (2, 2), steps=4)[method]
        for kind in ("deletion", "insertion"):
            torch.testing.assert_close(alone[kind], curves[method][kind])
    p = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64))
    torch.testing.assert_close(true_curves["deletion"][0], torch.tensor([p, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(true_curves["insertion"][0], torch.tensor([0.5, p, p, p, p], dtype=torch.float64))
    one_step = faith.perturbation_curves(predict, x, orders, (2, 2), steps=1)["true"]  # only the shared ends
    torch.testing.assert_close(one_step["deletion"][0], torch.tensor([p, 0.5], dtype=torch.float64))
    torch.testing.assert_close(one_step["insertion"][0], torch.tensor([0.5, p], dtype=torch.float64))
    true_auc, random_auc = faith.auc(true_curves["deletion"]).mean(), faith.auc(random_curves["deletion"]).mean()
    assert true_auc == pytest.approx((p + 0.5) / 8 + 3 * 0.5 / 4)
    assert true_auc < random_auc
    assert faith.auc(true_curves["insertion"]).mean() > faith.auc(random_curves["insertion"]).mean()


def test_weight_drift_is_relative_frobenius_change_per_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = an.parameter_groups(net)
    assert groups == {"0": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"]}
    start = an.snapshot(net)
    with torch.no_grad():
        net[1].weight.mul_(2)
    drift = an.weight_drift(start, an.snapshot(net), groups)
    w, b = start["1.weight"], start["1.bias"]
    assert drift["0"] == 0.0
    assert drift["1"] == pytest.approx(float(w.norm() / torch.sqrt(w.pow(2).sum() + b.pow(2).sum())))


def test_the_start_pass_is_reused_exactly_when_nothing_before_the_classifier_changed():
    """The premise of skipping the end pass: with only the head changed, a fresh probe pass records exactly
    what the start pass did; a changed block weight or a changed BatchNorm statistic rules the reuse out."""
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)
    images = [torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)]

    def prepare(batch):
        return batch.float() / 255

    def state(module):
        return an.snapshot(module), an.buffer_snapshot(module)

    start, before = state(net), an.probe_pass(net, images, prepare)

    def assert_same(after):
        for f in dataclasses.fields(before):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if isinstance(a, dict):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name
            else:
                assert torch.equal(a, b), f.name

    with torch.no_grad():
        net.head.weight.add_(1.0)
    assert an.same_probe_features(net, start, state(net))
    assert_same(an.probe_pass(net, images, prepare))
    linear_head = net.head  # a k-NN head (no weights, a feature bank) in its place: the features are still the same
    net.head = KNNClassifier(num_classes=3, k=2).fit(torch.randn(8, 192), torch.arange(8) % 3)
    assert an.same_probe_features(net, start, state(net))
    assert_same(an.probe_pass(net, images, prepare))
    net.head = linear_head
    with torch.no_grad():
        net.blocks[1].mlp.fc2.bias.add_(1e-3)
    assert not an.same_probe_features(net, start, state(net))

    resnet = torchvision.models.resnet18(num_classes=3)
    start = state(resnet)
    assert an.same_probe_features(resnet, start, state(resnet))
    resnet.layer4[1].bn2.running_var.mul_(2)
    assert not an.same_probe_features(resnet, start, state(resnet))
