"""What contnet's networks share: rebuilding from their ``config`` and setting the
manifestation of every block."""

from __future__ import annotations

from torch import nn

from ..block import ContinuousBlock


class Network(nn.Module):
    """Base of :class:`ContinuousNet` and :class:`ContinuousTransformer`: the continuous
    blocks are ``self.stages``; ``config`` holds the constructor arguments, whose first
    ones (:attr:`_positional`) are positional."""

    _positional: tuple[str, ...] = ()
    stages: nn.ModuleList
    config: dict

    @classmethod
    def from_config(cls, config: dict):
        """The network of a ``config`` (as :attr:`config` holds it)."""
        kw = dict(config)
        return cls(*[kw.pop(name) for name in cls._positional], **kw)

    def set_manifestation(self, scheme=None, n_steps: int | None = None) -> None:
        """Set ``scheme`` and/or ``n_steps`` of every block: fixed steps (a block's
        tolerance cleared; :meth:`ContinuousBlock.manifest` sets one)."""
        for block in self.blocks():
            block.manifest(
                block.scheme if scheme is None else scheme,
                block.n_steps if n_steps is None else n_steps,
            )

    def blocks(self) -> list[ContinuousBlock]:
        return list(self.stages)
