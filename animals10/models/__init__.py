"""Models by name (see registry.py); importing the package registers every architecture."""

from animals10.models import custom_cnn, timm_zoo, transfer  # noqa: F401 - registers the architectures
from animals10.models.registry import (
    ModelSpec,
    count_parameters,
    create_model,
    folder_name,
    get_model_spec,
    list_models,
    load_state_dict_file,
    model_choices,
    register_model,
    unwrap,
)

__all__ = [
    "ModelSpec",
    "count_parameters",
    "create_model",
    "folder_name",
    "get_model_spec",
    "list_models",
    "load_state_dict_file",
    "model_choices",
    "register_model",
    "unwrap",
]
