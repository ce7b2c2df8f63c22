"""LightningDataModule over packed, memory-mapped tokens: shuffled training windows, per-domain validation."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import PackedData


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets) over a uint16 memmap."""

    def __init__(self, tokens: np.ndarray, seq_len: int, limit: int | None = None) -> None:
        self.tokens, self.seq_len = tokens, seq_len
        n = (len(tokens) - 1) // seq_len
        self.n = n if limit is None else min(n, limit)
        if self.n < 1:
            raise ValueError(f"{len(tokens)} tokens hold no window of data.seq_len={seq_len} + 1 tokens")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.seq_len
        chunk = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch, so a resumed run sees the
    data it has not. Every rank gets the same number of samples (n // world), so ranks run equally many batches.

    multiple: each epoch holds a multiple of this many samples per rank (the loader's batch size times the
    gradient accumulation), so no optimizer step spans two epochs. Lightning ends an epoch with a step on its
    last batch and counts validation in batches: an epoch of an odd number of batches at accumulate=2 put every
    later validation and checkpoint in the middle of an optimizer step, shifted a resumed run's steps by one,
    and left no validation at the final step.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, multiple: int = 1) -> None:
        self.n, self.seed, self.rank, self.world, self.multiple = n, seed, rank, world, multiple
        self.epoch, self.start = 0, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.rank :: self.world][: len(self)].tolist()
        start, self.start = self.start, 0
        self.epoch += 1
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n // self.world // self.multiple * self.multiple

    def seek(self, samples_seen: int, batch_size: int) -> None:
        """Position after samples_seen samples of this rank, in batches of batch_size that drop the last partial
        batch of every epoch."""
        per_epoch = len(self) // batch_size * batch_size
        self.epoch, self.start = divmod(samples_seen, per_epoch) if per_epoch else (0, 0)


class ResumableLoader(DataLoader):
    """The training DataLoader with Lightning's stateful-loader interface (``state_dict``/``load_state_dict``):
    checkpoints store the training position, and a resumed run continues mid-epoch with the next unseen window.

    The position is the number of batches the training loop has processed, read from the trainer, not counted in
    the sampler: Lightning fetches batches ahead of the step that trains on them.
    """

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        return {"samples_seen": self._batches_done() * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.seek(int(state["samples_seen"]), self.batch_size)


class PackedDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: PackedData,
        seq_len: int,
        batch_size: int,
        val_windows: int | None,
        seed: int,
        num_workers: int,
        accumulate: int = 1,
    ):
        super().__init__()
        self.data, self.seq_len, self.batch_size, self.accumulate = data, seq_len, batch_size, accumulate
        self.val_windows, self.seed, self.num_workers = val_windows, seed, num_workers
        self.sampler: ResumableSampler | None = None
        self._samples_seen = 0

    @property
    def val_domains(self) -> list[str]:
        return self.data.domains

    def train_dataloader(self) -> DataLoader:
        ds = TokenWindows(self.data.tokens("train"), self.seq_len)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = ResumableSampler(len(ds), self.seed, rank, world, multiple=self.batch_size * self.accumulate)
        if len(self.sampler) == 0:
            raise ValueError(
                f"{len(ds)} training windows hold no optimizer step of trainer.batch_size={self.batch_size} x "
                f"trainer.accumulate={self.accumulate} windows per rank ({world} ranks)"
            )
        self.sampler.seek(self._samples_seen, self.batch_size)
        return ResumableLoader(
            ds,
            self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=self.num_workers,
            batches_done=self._batches_done,
        )

    def _batches_done(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.processed if self.trainer else 0

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                TokenWindows(self.data.tokens(f"val_{d}"), self.seq_len, self.val_windows),
                self.batch_size,
                num_workers=self.num_workers,
            )
            for d in self.val_domains
        ]

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints from before ResumableLoader kept the position here; newer ones restore it in the loader.
        self._samples_seen = int(state.get("samples_seen", 0))
