"""Where the policy is trained: in this process, or in trainer workers elsewhere.

The loop talks to a `Trainer` only (report §2.6.1: the trainer updates the policy, the
rollout engines receive its weights); `LocalTrainer` is the single-process one and
`k15rl.distributed.ray_backend.RemoteTrainer` the Ray one (FSDP2 shards when it has
several workers).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from k15rl.trainer.update import UpdateSettings, policy_update
from k15rl.types import Trajectory


class Trainer(Protocol):
    def update(self, trajectories: Sequence[Trajectory], settings: UpdateSettings) -> dict[str, float]:
        """All optimizer steps of one iteration; returns the averaged metrics."""
        ...

    def weights(self) -> Any:
        """The newest weights in the form the engine's `load_weights` takes (a state
        dict, or on Ray a reference to one in the object store)."""
        ...

    def current_model(self):
        """A model holding the newest weights, for checkpoints and the final save."""
        ...

    def offload(self) -> None:
        """Free the device for the rollout phase (colocated mode); `onload` undoes it."""
        ...

    def onload(self) -> None: ...


class LocalTrainer:
    """The policy in this process: `update` is `policy_update` on `model`."""

    def __init__(self, model, loss_fn: Callable, loss_kw: dict, pad_id: int, device: str = "cpu"):
        self.model, self.loss_fn, self.loss_kw, self.pad_id, self.device = model, loss_fn, loss_kw, pad_id, device

    def update(self, trajectories: Sequence[Trajectory], settings: UpdateSettings) -> dict[str, float]:
        return policy_update(self.model, trajectories, self.loss_fn, self.loss_kw, settings, self.pad_id)

    def weights(self):
        return self.model.state_dict()

    def current_model(self):
        return self.model

    def offload(self) -> None:
        """Parameters to host memory while the engine samples (a no-op on CPU). The
        optimizer is created afresh every iteration (report §2.3.2): no state to move."""
        if self.device != "cpu":
            self.model.to("cpu")

    def onload(self) -> None:
        if self.device != "cpu":
            self.model.to(self.device)
