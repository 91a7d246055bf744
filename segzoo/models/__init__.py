"""Model assembly (UnetMetaSpec), the named models and the registry."""

from segzoo.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
