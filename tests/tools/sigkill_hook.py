"""A test-only hook that kills its own training process with SIGKILL (as ``kill -9`` would): no
``after_train_iter`` of any other hook, no clean-up, no checkpoint runs after it."""

import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SigkillAfterIterHook(Hook):
    priority = 'HIGHEST'  # before CheckpointHook and the logger: the iteration's work is lost

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)
