"""Networks for the ``model`` config group."""

from gnr650.models.factory import BuiltModel, build_resnet18, build_timm, build_vit
from gnr650.models.weights import WeightsError, load_weights, read_state_dict

__all__ = ["BuiltModel", "build_resnet18", "build_timm", "build_vit", "WeightsError", "load_weights", "read_state_dict"]
