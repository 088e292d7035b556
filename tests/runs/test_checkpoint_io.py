"""LocalCheckpointIO: atomic local writes, and one write for two checkpoints of the same state."""

import torch

from gnr650.runs.checkpoint_io import LocalCheckpointIO


def _checkpoint(net, optimizer, step):
    return {
        "epoch": 0,
        "global_step": step,
        "state_dict": net.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
    }


def test_same_state_is_linked_and_a_new_step_is_written(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    io = LocalCheckpointIO()
    io.save_checkpoint(_checkpoint(net, optimizer, 1), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(net, optimizer, 1), tmp_path / "last.ckpt")
    io.save_checkpoint(_checkpoint(net, optimizer, 1), tmp_path / "last.ckpt")  # a second saver of last.ckpt
    assert (tmp_path / "best.ckpt").stat().st_ino == (tmp_path / "last.ckpt").stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    (tmp_path / "best.ckpt").unlink()  # ModelCheckpoint replacing its best: last.ckpt stays whole
    assert torch.equal(
        torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["weight"], net.weight.detach()
    )

    optimizer.step()
    io.save_checkpoint(_checkpoint(net, optimizer, 2), tmp_path / "last.ckpt")
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["weight"], net.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_weights_changed_in_place_at_the_same_step_are_written_again(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    io = LocalCheckpointIO()
    io.save_checkpoint(_checkpoint(net, optimizer, 5), tmp_path / "a.ckpt")
    with torch.no_grad():
        net.weight.add_(1)
    io.save_checkpoint(_checkpoint(net, optimizer, 5), tmp_path / "b.ckpt")
    assert (tmp_path / "a.ckpt").stat().st_ino != (tmp_path / "b.ckpt").stat().st_ino
    assert torch.equal(torch.load(tmp_path / "b.ckpt", weights_only=True)["state_dict"]["weight"], net.weight.detach())


def test_a_leftover_temporary_file_is_never_written_through(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    io = LocalCheckpointIO()
    io.save_checkpoint(_checkpoint(net, optimizer, 1), tmp_path / "best.ckpt")
    (tmp_path / ".last.ckpt.tmp").hardlink_to(tmp_path / "best.ckpt")  # left by a crash
    io.save_checkpoint(_checkpoint(net, optimizer, 2), tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
