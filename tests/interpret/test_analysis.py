"""The change-analysis maths against independent computations: linear CKA, attention distance, ridge probes,
deletion/insertion faithfulness, probe-set choice."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
import torchvision
from sklearn.linear_model import Ridge
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
    assert an.ridge_probe_accuracy(features[fit], labels[fit], features[score], labels[score], 4, ridge=1.0) == 1.0
    noise = torch.randn(80, 6, generator=g, dtype=torch.float64)
    assert an.ridge_probe_accuracy(noise[fit], labels[fit], noise[score], labels[score], 4, ridge=1.0) < 0.6


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


def cka_by_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Brute force: centre, then ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) with numpy's own norms."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_linear_cka_brute_force_shift_invariance_and_constant_features():
    g = np.random.default_rng(1)
    x = g.normal(size=(30, 5)) + np.arange(5) * 3.0  # far from centred: a missing centring changes the number
    y = np.tanh(x @ g.normal(size=(5, 9))) + 2.0
    value = an.linear_cka(torch.from_numpy(x), torch.from_numpy(y).float())
    assert value == pytest.approx(cka_by_numpy(x, y), abs=1e-6)
    assert an.linear_cka(torch.from_numpy(x + 10), torch.from_numpy(y)) == pytest.approx(cka_by_numpy(x, y), abs=1e-9)
    frozen = torch.from_numpy(x)
    assert an.linear_cka(frozen, frozen.clone()) == 1.0 or an.linear_cka(frozen, frozen.clone()) == pytest.approx(1.0)
    assert math.isnan(an.linear_cka(torch.ones(30, 4), torch.from_numpy(y)))
    assert math.isnan(an.linear_cka(torch.from_numpy(y), torch.full((30, 2), 7.0)))


def test_weight_drift_of_a_frozen_network_is_zero_and_of_a_zero_start_is_the_absolute_change():
    start = {"a.w": torch.zeros(2, 2, dtype=torch.float64), "b.w": torch.tensor([3.0, 4.0], dtype=torch.float64)}
    groups = {"a": ["a.w"], "b": ["b.w"]}
    assert an.weight_drift(start, {k: v.clone() for k, v in start.items()}, groups) == {"a": 0.0, "b": 0.0}
    end = {"a.w": torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.float64), "b.w": torch.tensor([6.0, 8.0])}
    assert an.weight_drift(start, end, groups) == {"a": 3.0, "b": 1.0}  # |(1,2,2)| = 3; |(3,4)| / |(3,4)| = 1


def ridge_by_sklearn(fit_x, fit_y, score_x, score_y, num_classes, ridge):
    """sklearn's Ridge (unpenalised intercept) on features standardised with the fit half's (n - 1) std."""
    fit_x, score_x = fit_x.numpy(), score_x.numpy()
    mean, std = fit_x.mean(0), fit_x.std(0, ddof=1)
    targets = np.eye(num_classes)[fit_y.numpy()]
    model = Ridge(alpha=ridge * fit_x.shape[1], fit_intercept=True, solver="cholesky")
    model.fit((fit_x - mean) / std, targets)
    return float((model.predict((score_x - mean) / std).argmax(1) == score_y.numpy()).mean())


@pytest.mark.parametrize("width", [6, 90])  # d <= n: primal solve; d > n: dual solve
def test_ridge_probe_equals_sklearn_ridge_for_several_penalties(width):
    g = torch.Generator().manual_seed(width)
    labels = torch.tensor([0, 1, 0, 2, 0, 1] * 10)  # imbalanced (30/20/10): the class prior (intercept) matters
    signal = nn.functional.one_hot(labels, 3).double() @ torch.randn(3, width, generator=g, dtype=torch.float64)
    features = 0.6 * signal + torch.randn(60, width, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, width)
    features = features + 5.0  # off-centre: a missing standardisation would show
    fit, score = an.probe_halves(labels)
    accuracies = set()
    for ridge in (0.01, 1.0, 30.0):
        halves = features[fit], labels[fit], features[score], labels[score], 3
        got = an.ridge_probe_accuracy(*halves, ridge=ridge)
        assert got == pytest.approx(ridge_by_sklearn(*halves, ridge))
        accuracies.add(got)
    assert len(accuracies) > 1  # the penalty matters in this case, so its scale is checked


def test_patch_distances_on_a_non_square_grid_and_patch():
    """2 x 3 patches of 4 px tall, 8 px wide: along a row 8 px, down a column 4 px, diagonal sqrt(4^2 + 8^2)."""
    d = an.patch_distances((2, 3), (4.0, 8.0))
    assert d.shape == (6, 6) and d.dtype == torch.float64
    assert d[0, 1] == 8 and d[0, 2] == 16 and d[0, 3] == 4 and d[0, 4] == pytest.approx(math.hypot(4, 8))
    assert d[5, 0] == pytest.approx(math.hypot(4, 16)) and torch.equal(d, d.T) and d.diagonal().abs().sum() == 0


def test_mean_attention_distance_and_entropy_of_attention_set_by_hand():
    """2 prefix tokens, 2 x 2 patches of 10 px. Head 0: every patch query attends to patch 0 only (plus mass on
    the prefix tokens, dropped by the renormalisation): distances 0, 10, 10, 10*sqrt(2), mean (20 + 10 sqrt 2) / 4.
    Head 1: each query attends to itself: 0. CLS row: head 0 split 1:3 over two patches, head 1 on one patch."""
    t = 6
    attn = torch.zeros(1, 2, t, t)
    attn[0, 0, :, 0] = 0.5  # the CLS key takes half of every row
    attn[0, 0, 2:, 2] = 0.5
    attn[0, 1, :, 1] = 0.2  # the second prefix token
    for q in range(2, t):
        attn[0, 1, q, q] = 0.8
    attn[0, 0, 0, 2:] = torch.tensor([0.125, 0.375, 0.0, 0.0])
    attn[0, 0, 0, 0] = 0.5
    attn[0, 1, 0, 3] = 0.8
    distances = an.patch_distances((2, 2), (10.0, 10.0))
    result = an.mean_attention_distance(attn, 2, distances)
    torch.testing.assert_close(result, torch.tensor([[(20 + 10 * math.sqrt(2)) / 4, 0.0]], dtype=torch.float64))
    entropy = an.cls_entropy(attn, 2)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy, torch.tensor([[expected, 0.0]], dtype=torch.float64))


def test_probe_order_is_rank_first_then_class_and_halves_alternate_within_each_class():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1])
    idx = an.probe_indices(labels, 9, seed=0)
    assert labels[idx].tolist() == [0, 1, 2] * 3  # round robin over classes, in class order
    assert labels[an.probe_indices(labels, 2, seed=5)].tolist() == [0, 1]
    assert an.probe_indices(labels, 1, seed=0).tolist() == [idx[0]]  # one image is a valid probe set
    fit, score = an.probe_halves(torch.tensor([0, 0, 0, 1, 1, 1, 1]))
    assert fit.tolist() == [0, 2, 3, 5] and score.tolist() == [1, 4, 6]


class WithRootParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(3))
        self.stage = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.BatchNorm1d(3))
        self.head = nn.Linear(3, 2)


def test_parameter_groups_layer_kinds_and_classifier_by_hand():
    net = WithRootParameter()
    groups = an.parameter_groups(net)
    assert groups == {
        an.ROOT_PARAMS: ["token"],
        "stage.0": ["stage.0.weight", "stage.0.bias"],
        "stage.1": ["stage.1.weight", "stage.1.bias"],
        "stage.2": ["stage.2.weight", "stage.2.bias"],
        "head": ["head.weight", "head.bias"],
    }
    assert an.layer_kinds(net, list(groups)) == {
        an.WEIGHT_LAYERS: [an.ROOT_PARAMS, "stage.0", "head"],
        an.NORM_LAYERS: ["stage.1", "stage.2"],
    }
    assert an.classifier(net) == ("head", net.head)  # no get_classifier: the last linear layer
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)
    assert an.classifier(vit) == ("head", vit.head)
    assert an.block_names(vit) == an.representation_layers(vit) == ["blocks.0", "blocks.1"]
    blocks = an.block_groups(vit, an.parameter_groups(vit))
    assert list(blocks) == ["blocks.0", "blocks.1"]
    assert sorted(blocks["blocks.1"]) == sorted(n for n, _ in vit.named_parameters() if n.startswith("blocks.1."))
    snap = an.snapshot(vit)
    assert all(t.dtype == torch.float64 for t in snap.values()) and snap.keys() == dict(vit.named_parameters()).keys()
    net.double()  # already float64: the snapshot must still be a copy, or every drift would read 0
    start, buffers = an.snapshot(net), an.buffer_snapshot(net)
    with torch.no_grad():
        net.head.weight.add_(1.0)
        net.stage[2].running_mean.add_(1.0)
    assert an.weight_drift(start, an.snapshot(net), {"head": ["head.weight"]})["head"] > 0
    assert not torch.equal(buffers["stage.2.running_mean"], net.stage[2].running_mean)
    with pytest.raises(ValueError, match="timm ViTs, ResNets"):
        an.representation_layers(net)


class FeatureInfoCNN(nn.Module):
    """A timm-style CNN known only by its ``feature_info`` (as timm's EfficientNets, ConvNeXts)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.deep = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.feature_info = [{"module": "stem"}, {"module": "deep.1"}]


def test_block_and_representation_layers_of_resnets_and_other_cnns():
    resnet = torchvision.models.resnet18(num_classes=3)
    assert an.representation_layers(resnet) == ["layer1", "layer2", "layer3", "layer4"]
    assert an.block_names(resnet) == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    cnn = FeatureInfoCNN()  # neither ViT blocks nor ResNet stages: timm's feature_info names the stages
    assert an.representation_layers(cnn) == ["stem", "deep.1"] and an.block_names(cnn) == ["stem", "deep.1"]
    cnn.output_fmt = "NHWC"  # channels-last maps are not compared
    with pytest.raises(ValueError, match="FeatureInfoCNN is none of them.*callbacks out: callbacks=default"):
        an.representation_layers(cnn)


def test_probe_pass_of_a_vit_records_each_blocks_tokens_and_attention_from_a_pass_by_hand():
    """Non-square input (2 x 3 patches of 16 px), 2 batches: CLS token and patch mean after each block, the
    classifier's input, and attention distance/entropy brute-forced in numpy from each block's attention."""
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=(32, 48), depth=2)
    batches = [torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8) for _ in range(2)]

    def prepare(images):
        return images.float() / 255 - 0.5

    features = an.probe_pass(net, batches, prepare)
    x = prepare(torch.cat(batches))
    centres = np.array([(16 * r, 16 * c) for r in range(2) for c in range(3)], dtype=np.float64)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)  # [6, 6] pixels
    with torch.no_grad():
        h = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        for i, block in enumerate(net.blocks):
            attn = attention_by_hand(block, h)
            h = block(h)
            close = {"rtol": 1e-5, "atol": 1e-6}  # float32: our unfused pass vs timm's fused one
            torch.testing.assert_close(features.cls[f"blocks.{i}"], h[:, 0].double(), **close)
            torch.testing.assert_close(features.patch_mean[f"blocks.{i}"], h[:, 1:].mean(1).double(), **close)
            a = attn[..., 1:, 1:]  # patch queries and keys, renormalised over the keys
            a = a / a.sum(-1, keepdims=True)
            expected_distance = (a * distance).sum(-1).mean(-1)
            p = attn[..., 0, 1:] / attn[..., 0, 1:].sum(-1, keepdims=True)
            expected_entropy = -(p * np.log(p)).sum(-1)
            np.testing.assert_allclose(features.attention_distance[f"blocks.{i}"].numpy(), expected_distance, rtol=1e-5)
            np.testing.assert_allclose(features.attention_entropy[f"blocks.{i}"].numpy(), expected_entropy, rtol=1e-5)
        final = net.forward_head(net.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features.final, final.double(), rtol=1e-5, atol=1e-6)


def attention_by_hand(block: nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """Softmax(q k^T / sqrt(d)) of a timm block's attention recomputed from its input, [B, H, T, T] in float64."""
    attn = block.attn
    b, t, c = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(b, t, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q @ k.transpose(-2, -1) * attn.scale).softmax(-1).double().numpy()


def test_probe_pass_of_a_resnet_records_the_pooled_stages_and_the_classifier_input():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    batches = [torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)]
    features = an.probe_pass(net, batches, lambda images: images.float() / 255)
    with torch.no_grad():
        net.eval()
        h = net.maxpool(net.relu(net.bn1(net.conv1(batches[0].float() / 255))))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(net, stage)(h)
            torch.testing.assert_close(features.cls[stage], h.mean((2, 3)).double())
    torch.testing.assert_close(features.final, h.mean((2, 3)).double())
    assert features.patch_mean == features.attention_distance == features.attention_entropy == {}
