"""Models (conf/model)."""

from speechkit.models.base import (build_model, feature_extractor_for, input_window_samples, model_config,  # noqa: F401
                                   receptive_field, uses_attention_mask)
