"""eval.device, the lm-eval CLI's --device and the moda model's device argument: checked before any work, as
run.py checks trainer.accelerator (moda_lab.train.task.check_accelerator). Read by the config check in
evaluate.py, by cli.py and by the model in lm.py; none of them imports another for it."""

from __future__ import annotations

import torch

from ..errors import UsageError


def check_device(device: str | torch.device | None, key: str, error: type[UsageError] = UsageError) -> None:
    """A device that cannot run here: not a torch device, or a CUDA one on a machine that shows no CUDA GPU (or
    fewer GPUs than its index): ``error`` naming ``key`` and what is allowed. None and "auto" always run."""
    if device is None or device == "auto":
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise error(f"{key}={device!r} is not a torch device ({err}); use auto, cpu, cuda, cuda:1") from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise error(
            f"{key}={str(device)!r} needs a CUDA GPU and this machine shows none (torch.cuda.is_available() is "
            f"False); allowed here: {key}=cpu or {key}=auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise error(
            f"{key}={str(device)!r} names GPU {device.index}, but this machine shows {count}; allowed here: "
            f"{key}=auto, cpu, cuda or cuda:0 .. cuda:{count - 1}"
        )
