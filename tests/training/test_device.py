"""channels_last: auto picks it for conv nets on a GPU; true/false force it; anything else is refused."""

import pytest
from torch import nn

from gnr650.training.device import use_channels_last


def test_channels_last_setting():
    conv = nn.Sequential(nn.Conv2d(3, 64, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    mlp = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
    assert use_channels_last("auto", "gpu", conv) and not use_channels_last("auto", "cpu", conv)
    assert not use_channels_last("auto", "gpu", mlp)
    assert use_channels_last(True, "cpu", mlp) and not use_channels_last(False, "gpu", conv)
    with pytest.raises(ValueError, match=r"channels_last must be auto, true or false \(got 'flase'\)"):
        use_channels_last("flase", "gpu", conv)
