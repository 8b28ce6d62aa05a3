"""Frozen configuration dataclasses, named presets and flat overrides.

A run is fully described by a :class:`RunConfig` (data + model + train + quant + eval + ttt;
:mod:`~gepalib.config.sections`). Presets are ``RunConfig`` values
(:mod:`~gepalib.config.presets`); change them with :func:`override`
(:mod:`~gepalib.config.overrides`: ``dataclasses.replace`` routed to the right section by the
field's name alone, since field names are unique across all sections). Everything is
imported from here: ``from gepalib.config import get_preset, override``.

Every value is checked when it is built: each section's ``__post_init__`` (and
``RunConfig``'s, for checks across sections) runs :mod:`gepalib.validation`, which
raises a ValueError naming the field, so a bad ``override``/``replace``/``from_dict``/
CLI flag fails before anything runs or is written. Only the checks that need the
number of processes (gradient accumulation) are left to the trainer's plan.
"""
from gepalib.config.overrides import (FALSE_WORDS, FIELD_INDEX, TRUE_WORDS, field_help, field_type, override,
                                      parse_overrides, parse_scalar, parse_value)
from gepalib.config.presets import BASELINE9, GEPA11, PRESETS, SMALL, TINY, get_preset
from gepalib.config.sections import (SECTIONS, DataConfig, EvalConfig, ModelConfig, QuantConfig, RunConfig,
                                     TrainConfig, TTTConfig, load_config)

__all__ = [
    "BASELINE9", "FALSE_WORDS", "FIELD_INDEX", "GEPA11", "PRESETS", "SECTIONS", "SMALL", "TINY", "TRUE_WORDS",
    "DataConfig", "EvalConfig", "ModelConfig", "QuantConfig", "RunConfig", "TTTConfig", "TrainConfig",
    "field_help", "field_type", "get_preset", "load_config", "override", "parse_overrides", "parse_scalar",
    "parse_value",
]
