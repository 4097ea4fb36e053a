"""Model parts and families. Importing this package registers every built-in part."""
from polymodal.models import decoder, efficientnet, families, fusion, heads, text, vision  # noqa: F401  (registration)
from polymodal.models import detector  # noqa: F401  (registration)
from polymodal.models.base import Component, Features, build  # noqa: F401
from polymodal.registry import MODELS


def build_model(spec: dict, source: str | None = None):
    """Build a whole model family from its spec (`type`: dual_encoder | fusion_encoder | encoder_decoder).

    Args:
        spec: the `model` block of a recipe, run config or checkpoint config.
        source: the file the spec came from; config errors are prefixed with it.
    """
    from polymodal.errors import ConfigError

    try:
        model = MODELS.build(spec, "model")
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from exc
        raise
    model.build_spec = dict(spec)
    return model
