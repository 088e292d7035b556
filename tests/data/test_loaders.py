"""What the loaders serve: a training epoch covers every sample once (a lone last sample aside, which batch norm
cannot take), evaluation every sample exactly once, in order."""

import pytest
import torch

from gnr650.data import SPLITS, SyntheticDataModule
from gnr650.data.datamodule import Split


@pytest.mark.parametrize("n_train,lone", [(36, False), (32, False), (33, True)])
def test_a_training_epoch_covers_every_sample_once_and_evaluation_covers_each_in_order(n_train, lone):
    dm = SyntheticDataModule(batch_size=8, eval_batch_size=5)
    sizes = dict(zip(SPLITS, (n_train, 13, 7)))
    # Labels that number the samples: a batch's labels say which samples it holds.
    dm.splits = {name: Split(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.arange(n)) for name, n in sizes.items()}
    batches = [labels for _, labels in dm.train_dataloader()]
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == len(seen) == n_train - lone
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1) and len(batches[-1]) > 1
    assert not torch.equal(seen, torch.arange(len(seen)))  # shuffled
    for name, loader in (("val", dm.val_dataloader()), *zip(SPLITS, dm.test_dataloader())):
        assert torch.equal(torch.cat([labels for _, labels in loader]), torch.arange(sizes[name])), name
