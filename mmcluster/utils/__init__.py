from .checkpoint import (SAFE_CHECKPOINT_GLOBALS, LoadReport, extract_state_dict, install_safe_checkpoint_loading,
                         load_pretrained, safe_load)

__all__ = ['SAFE_CHECKPOINT_GLOBALS', 'LoadReport', 'extract_state_dict', 'install_safe_checkpoint_loading',
           'load_pretrained', 'safe_load']
