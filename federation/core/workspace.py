"""A pass's working copies: what it has given away so far, kept apart from the region state.

A pass places several jobs before any claim is written; each must see what the ones before it
took. So the pass works on copies: a node's free capacity is copied the first time the pass takes
from it, and the free-capacity index the first time the pass re-keys a node. The region state is
never edited by a pass; what the pass decided goes back as a :class:`~federation.core.planning.Plan`.
A node is *touched* once the pass changed it, and *sealed* once its one proposal of the pass
removes allocations (preemption, reclaim): nothing else goes there in the same pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.core.capacity import Free
from federation.core.index import FreeIndex, Overlay

if TYPE_CHECKING:
    from federation.core.views import Region


class Workspace:
    """The working copies of one pass over ``core``."""

    def __init__(self, core: Region) -> None:
        self.core = core
        self.work: dict[str, Free] = {}
        self.touched: set[str] = set()
        self.sealed: set[str] = set()  # nodes whose one proposal this pass preempts: nothing else goes there
        # the region's, until this pass changes a node's key: then an overlay of it
        self.index: FreeIndex | Overlay = core.index
        self.expired: set[str] = set()  # nodes found with an expired offer (the core drops them)

    def free(self, name: str) -> Free | None:
        """The node's free capacity as this pass counts it."""
        if name in self.work:
            return self.work[name]
        node = self.core.nodes.get(name)
        return node.free if node is not None else None

    def take(self, name: str) -> Free:
        """The node's working copy, to take devices from (made on first use)."""
        if name not in self.work:
            free = self.free(name)
            assert free is not None
            self.work[name] = free.copy()
        self.touched.add(name)
        return self.work[name]

    def replace(self, name: str, free: Free) -> None:
        """Make ``free`` the node's working copy (a gang giving back what it took, a preemption
        counting the node without its victims)."""
        self.work[name] = free

    def forget(self, name: str) -> None:
        """Drop the node's working copy: the region's figure counts again."""
        self.work.pop(name, None)

    def put(self, name: str, free: Free) -> None:
        """Re-key ``name`` in this pass's index (later jobs of the pass see what is left)."""
        self._writable().put(name, free)

    def drop(self, name: str) -> None:
        """Take ``name`` out of this pass's index (no room left, or its one proposal is made)."""
        if name in self.index:
            self._writable().discard(name)

    def rekey(self, name: str) -> None:
        """Put ``name`` back in the index under what it has left, or out when it has no slot."""
        free = self.free(name)
        if free is not None and free.slots > 0:
            self.put(name, free)
        else:
            self.drop(name)

    def seal(self, name: str) -> None:
        """The node's one proposal of this pass removes allocations: nothing else goes there."""
        self.touched.add(name)
        self.sealed.add(name)
        self.drop(name)

    def _writable(self) -> Overlay:
        if isinstance(self.index, FreeIndex):
            self.index = self.index.overlay()
        return self.index
