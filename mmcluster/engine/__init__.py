"""Extensions of mmengine's training loop. Importing this package registers :class:`RNGStateHook` in
mmengine's root ``HOOKS`` registry, where mmdet's and mmseg's registries find it too."""

from .hooks import RNGStateHook, advance_sampler, get_rng_state, set_rng_state

__all__ = ['RNGStateHook', 'advance_sampler', 'get_rng_state', 'set_rng_state']
