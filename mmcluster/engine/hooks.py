"""Exact resume for mmengine runners: the random-number-generator states and the sampler's position.

mmengine 0.10.7 saves the model, optimizer, schedulers and message hub in a checkpoint, but not the states
of torch's, numpy's and Python's global random number generators, and on ``--resume`` it re-seeds them
from the config. An iteration-based loop also skips the batches already trained on by fetching them
again through the data pipeline (``IterBasedTrainLoop.run`` calls ``next`` on its dataloader iterator
``iter`` times), which is slow and draws from the generators the pipeline uses. Training that stops and
resumes therefore differs from training straight through: other flips, other dropout masks.

:class:`RNGStateHook` closes the gap:

* ``before_save_checkpoint`` writes the generator states of every process under the checkpoint key
  ``'rng_state'`` (tensors, ints, floats: loadable with ``torch.load(weights_only=True)``), with the
  sampler's seed. In distributed runs the states of all ranks are gathered to rank 0 when a
  :class:`~mmengine.hooks.CheckpointHook` is about to save.
* ``after_load_checkpoint`` keeps them; when the run was resumed (the train loop starts at the
  checkpoint's iteration) they are restored right before the first new batch is fetched, which is the
  point where the straight run fetched it: for ``IterBasedTrainLoop`` (with ``num_workers=0``) the loop's
  data skipping is replaced by advancing the batch sampler alone, without loading any data; for
  ``EpochBasedTrainLoop`` the states are restored at the start of the next epoch.
* Validation inside training leaves the generators as it found them, so that a checkpoint written at the
  same iteration as a validation resumes to the same states as the straight run.

Bit-exact on CPU with ``num_workers=0`` (tested). With worker processes, the iteration-based loop keeps
mmengine's skipping by fetching: the workers load the skipped batches again, so their generators (seeded
by mmengine's ``worker_init_fn`` when they start) reach the same states as in the uninterrupted run, and
the resume is exact as well, at the cost of loading those batches. The epoch-based loop starts new
workers every epoch unless ``persistent_workers=True``; persistent workers carry their generator states
from one epoch to the next in a process whose states cannot be saved, so such a resume is not exact.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner.loops import EpochBasedTrainLoop, IterBasedTrainLoop, _InfiniteDataloaderIterator

CHECKPOINT_KEY = 'rng_state'
FORMAT_VERSION = 1


def get_rng_state() -> dict:
    """This process's global generator states (torch CPU and current CUDA device, numpy, ``random``) as
    a dict of tensors, ints and floats, which ``torch.load(weights_only=True)`` accepts."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        numpy=dict(
            key=torch.from_numpy(key.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss), gauss=float(gauss)
        ),
        random=dict(version=int(version), state=torch.tensor(internal, dtype=torch.int64), gauss_next=gauss_next),
    )
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    np_state = state['numpy']
    np.random.set_state(
        (
            'MT19937',
            np_state['key'].numpy().astype(np.uint32),
            np_state['pos'],
            np_state['has_gauss'],
            np_state['gauss'],
        )
    )
    py_state = state['random']
    random.setstate((py_state['version'], tuple(int(v) for v in py_state['state'].tolist()), py_state['gauss_next']))


def _sampler_of(dataloader) -> Any:
    sampler = getattr(dataloader, 'sampler', None)
    if sampler is None or not hasattr(sampler, 'seed'):
        sampler = getattr(getattr(dataloader, 'batch_sampler', None), 'sampler', sampler)
    return sampler


def _set_sampler_epoch(dataloader, epoch: int) -> None:
    """What ``_InfiniteDataloaderIterator`` does when its dataloader is exhausted."""
    if hasattr(dataloader, 'sampler') and hasattr(dataloader.sampler, 'set_epoch'):
        dataloader.sampler.set_epoch(epoch)
    elif hasattr(dataloader, 'batch_sampler') and hasattr(dataloader.batch_sampler.sampler, 'set_epoch'):
        dataloader.batch_sampler.sampler.set_epoch(epoch)


def _can_advance_sampler_only(iterator) -> bool:
    """Whether the batches of ``iterator`` can be skipped by drawing indices from its batch sampler:
    mmengine's infinite iterator over a single-process DataLoader that has not fetched anything yet
    (worker processes prefetch from the sampler as soon as the iterator exists)."""
    from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

    return (
        isinstance(iterator, _InfiniteDataloaderIterator)
        and isinstance(iterator._iterator, _SingleProcessDataLoaderIter)
        and iterator._iterator._num_yielded == 0
    )


def advance_sampler(iterator: _InfiniteDataloaderIterator, num_batches: int) -> None:
    """Move ``iterator`` on by ``num_batches`` batches through its batch sampler only (no data loaded),
    restarting the dataloader (and setting the sampler's epoch) at its end as the iterator itself does."""
    for _ in range(num_batches):
        try:
            iterator._iterator._next_index()
        except StopIteration:
            iterator._epoch += 1
            _set_sampler_epoch(iterator._dataloader, iterator._epoch)
            iterator._iterator = iter(iterator._dataloader)
            iterator._iterator._next_index()


class _ResumeIterator:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` during the first fetches after resuming.

    ``IterBasedTrainLoop.run`` first calls ``next`` ``skip`` times to skip the batches already trained on
    and then fetches the first new batch. When the sampler alone can be advanced, the skipping calls
    return None without loading anything and the sampler is advanced at the first new fetch; otherwise
    (worker processes) they fetch as mmengine does, which replays the workers' random draws. Right before
    the first new batch is fetched the generator states are restored and the loop gets its own iterator
    back.
    """

    def __init__(self, loop, skip: int, restore) -> None:
        self.loop = loop
        self.inner = loop.dataloader_iterator
        self.skip = skip
        self.restore = restore
        self.sampler_only = _can_advance_sampler_only(self.inner)

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return None if self.sampler_only else next(self.inner)
        self.loop.dataloader_iterator = self.inner
        if self.sampler_only:
            advance_sampler(self.inner, self.loop.iter)
        self.restore()
        return next(self.inner)


def _checkpoint_due(runner, by_epoch: bool) -> bool:
    """Whether a CheckpointHook saves at the end of this iteration (epoch), by its own rules."""
    for hook in runner.hooks:
        if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
            continue
        if by_epoch:
            due = hook.every_n_epochs(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_epoch(runner)
            )
        else:
            due = hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_iter(runner)
            )
        if due:
            return True
    return False


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the random generator states in every checkpoint and restore them on resume, so that
    ``--resume`` continues exactly as the uninterrupted run (see the module docstring)."""

    # After the NORMAL hooks (DistSamplerSeedHook sets the sampler's epoch before we restore), and before
    # CheckpointHook (VERY_LOW, 90), so that the states of all ranks are gathered before it saves.
    priority = 85

    def __init__(self) -> None:
        self._loaded: Optional[dict] = None  # the 'rng_state' of the checkpoint last loaded, and its meta
        self._loaded_meta: Optional[dict] = None
        self._pending: Optional[dict] = None  # this rank's states, to restore at the first new batch
        self._gathered: Optional[tuple] = None  # (step key, states of all ranks) in distributed runs
        self._before_val: Optional[dict] = None

    # -- saving ---------------------------------------------------------------------------------------

    def _step_key(self, runner) -> tuple:
        return runner.epoch, runner.iter, self._before_val is not None

    def _gather(self, runner, state: dict) -> None:
        _, world_size = get_dist_info()
        if world_size > 1:
            self._gathered = (self._step_key(runner), all_gather_object(state))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if get_dist_info()[1] > 1 and _checkpoint_due(runner, by_epoch=False):
            self._gather(runner, get_rng_state())

    def after_train_epoch(self, runner) -> None:
        if get_dist_info()[1] > 1 and _checkpoint_due(runner, by_epoch=True):
            self._gather(runner, get_rng_state())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # A checkpoint saved during validation (CheckpointHook's save_best) gets the states from before
        # it, which are the ones training continues with.
        local = self._before_val if self._before_val is not None else get_rng_state()
        rank, world_size = get_dist_info()
        ranks: list = [None] * world_size
        if self._gathered is not None and self._gathered[0] == self._step_key(runner):
            ranks = list(self._gathered[1])
        ranks[rank] = local
        sampler = _sampler_of(runner.train_loop.dataloader) if self._train_loop_built(runner) else None
        seed = getattr(sampler, 'seed', None)
        checkpoint[CHECKPOINT_KEY] = dict(
            version=FORMAT_VERSION,
            world_size=world_size,
            ranks=ranks,
            sampler_seed=int(seed) if isinstance(seed, (int, np.integer)) else None,
        )

    @staticmethod
    def _train_loop_built(runner) -> bool:
        return not isinstance(getattr(runner, '_train_loop', None), (dict, type(None)))

    # -- validation inside training leaves the states as it found them ---------------------------------

    def before_val(self, runner) -> None:
        self._before_val = get_rng_state()
        if get_dist_info()[1] > 1 and any(isinstance(h, CheckpointHook) and h.save_best for h in runner.hooks):
            self._gather(runner, self._before_val)

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            set_rng_state(self._before_val)
            self._before_val = None

    # -- resuming -------------------------------------------------------------------------------------

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get(CHECKPOINT_KEY)
        self._loaded_meta = dict(checkpoint.get('meta') or {})

    def before_train(self, runner) -> None:
        meta, saved = self._loaded_meta, self._loaded
        self._loaded = self._loaded_meta = None
        # resumed: Runner.resume set the loop to the checkpoint's iteration (load_from leaves it at 0)
        if not meta or runner.iter == 0 or meta.get('iter') != runner.iter:
            return
        loop = runner.train_loop
        state = self._state_of_this_rank(runner, saved)
        if saved is not None:
            self._restore_sampler_seed(runner, saved)
        if isinstance(loop, IterBasedTrainLoop):
            resume_iterator = _ResumeIterator(loop, loop.iter, lambda: self._restore(runner, state))
            loop.dataloader_iterator = resume_iterator
            if resume_iterator.sampler_only:
                runner.logger.info(f'RNGStateHook: skipping {loop.iter} batches by advancing the sampler only')
            else:
                runner.logger.info(
                    f'RNGStateHook: the dataloader has worker processes: skipping {loop.iter} '
                    "batches by loading them (mmengine's way), so that the workers' random "
                    'states follow the uninterrupted run'
                )
        elif isinstance(loop, EpochBasedTrainLoop):
            if meta.get('iter') != meta.get('epoch', 0) * len(loop.dataloader):
                runner.logger.warning(
                    f'RNGStateHook: the checkpoint was written inside epoch {meta.get("epoch", 0) + 1} '
                    f'(iter {meta.get("iter")}); EpochBasedTrainLoop restarts that epoch from its first batch, '
                    'so training does not continue exactly as an uninterrupted run would. Save checkpoints '
                    'at the end of epochs (CheckpointHook by_epoch=True) for an exact resume.'
                )
                return
            self._pending = state
            if getattr(loop.dataloader, 'persistent_workers', False):
                runner.logger.warning(
                    'RNGStateHook: persistent dataloader workers keep their random states '
                    'across epochs in processes whose states are not saved: random '
                    'augmentations after resuming differ from an uninterrupted run'
                )
        else:
            runner.logger.warning(
                f'RNGStateHook: {type(loop).__name__} is not an mmengine iteration- or '
                'epoch-based loop; restoring the random states before training starts'
            )
            self._restore(runner, state)

    def before_train_epoch(self, runner) -> None:
        if self._pending is not None:
            self._restore(runner, self._pending)
            self._pending = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if data_batch is None and isinstance(runner.train_loop, IterBasedTrainLoop):
            raise RuntimeError(
                'RNGStateHook: the train loop fetched fewer batches to skip on resume than its '
                'iteration count, unlike mmengine 0.10 IterBasedTrainLoop; remove RNGStateHook '
                'from custom_hooks for this loop'
            )

    def _state_of_this_rank(self, runner, saved: Optional[dict]) -> Optional[dict]:
        if saved is None:
            runner.logger.warning(
                'RNGStateHook: the checkpoint holds no random generator states (written '
                'without RNGStateHook): the data order continues exactly, the random '
                'augmentations and dropout masks do not'
            )
            return None
        rank, world_size = get_dist_info()
        if saved.get('world_size') != world_size:
            runner.logger.warning(
                f'RNGStateHook: the checkpoint was written by {saved.get("world_size")} '
                f'processes, this run has {world_size}: the run does not continue exactly'
            )
        ranks = saved.get('ranks') or []
        state = ranks[rank] if rank < len(ranks) else None
        if state is None:
            runner.logger.warning(
                f'RNGStateHook: the checkpoint holds no random generator states for rank '
                f'{rank}; this rank keeps the states seeded from the config'
            )
        return state

    def _restore_sampler_seed(self, runner, saved: dict) -> None:
        """A sampler built with a seed other than the checkpoint's (``randomness.seed=None`` draws a new
        one each run) gets the checkpoint's seed back while it has not drawn anything yet."""
        sampler = _sampler_of(runner.train_loop.dataloader)
        seed = saved.get('sampler_seed')
        if seed is None or not hasattr(sampler, 'seed') or sampler.seed == seed:
            return
        iterator = getattr(runner.train_loop, 'dataloader_iterator', None)
        if iterator is not None and not _can_advance_sampler_only(iterator):
            runner.logger.warning(
                f'RNGStateHook: the sampler was built with seed {sampler.seed}, the checkpoint '
                f'used {seed}, and its iterator has started: the data order differs'
            )
            return
        runner.logger.info(f"RNGStateHook: sampler seed {sampler.seed} -> {seed} (the checkpoint's)")
        sampler.seed = seed

    def _restore(self, runner, state: Optional[dict]) -> None:
        if state is not None:
            set_rng_state(state)
            runner.logger.info(f'RNGStateHook: random generator states restored at iter {runner.iter}')
