"""The free-capacity index: every node's eligible GPUs and free host resources as numpy rows.

One row per node, copied from the node's guaranteed `NodeView` (the same numbers a fit check
reads), refreshed only for nodes changed since the last query (`Ledger.capacity_index`). It
answers "which nodes can take k slices of (compute c, memory m), with this much CPU, host
memory and a pod slot" with one vectorised comparison over all nodes, instead of a
`NodeView` and a best fit per node state; the verdicts are those of `host_fits` and
`best_fit` for a one-group demand (docs/e2e.md "Issue 16": why and the figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from gpupool.ledger import NodeView

#: the verdict codes of `CapacityIndex.codes`, in the order `Placer._local_failure` checks them
FITS = 0
NO_CPU = 1
NO_MEMORY = 2
NO_POD_SLOT = 3
SHORTAGE = 4
#: the node's inventory alone rules the pod out (no GPU, or too few GPUs big enough): reasons name the node
INVENTORY = 5

#: stands for "no limit" (a None in the view) in the host columns
UNLIMITED = int(np.iinfo(np.int64).max)
#: free compute and memory of a column that holds no eligible GPU: no slice fits there
_NONE = -1
#: total memory of such a column: never equal to the free memory (the whole-GPU test)
_NO_TOTAL = -2

Array = npt.NDArray[np.int64]
Rows = npt.NDArray[np.intp]
#: lists of names whose rows `CapacityIndex.lookup` remembers (kube-scheduler sends the same lists again and again)
_LISTS = 6


class CapacityIndex:
    """Per-node rows of free GPU compute and memory (eligible GPUs, view order) and free host resources."""

    def __init__(self) -> None:
        self._row: dict[str, int] = {}
        self._spare: list[int] = []
        self._rows = 0  # rows handed out so far (used or spare)
        self.free_compute: Array = np.full((0, 0), _NONE, dtype=np.int64)
        self.free_memory: Array = np.full((0, 0), _NONE, dtype=np.int64)
        self.total_memory: Array = np.full((0, 0), _NO_TOTAL, dtype=np.int64)
        #: memory of every GPU of the node, eligible or not (the view's inventory)
        self.inventory_memory: Array = np.full((0, 0), _NONE, dtype=np.int64)
        self.inventory_count: Array = np.zeros(0, dtype=np.int64)
        self.cpu_free: Array = np.zeros(0, dtype=np.int64)
        self.memory_free: Array = np.zeros(0, dtype=np.int64)
        self.pods_free: Array = np.zeros(0, dtype=np.int64)
        #: the view's model (an id into `models`) and its number of eligible GPUs (the columns in use)
        self.model: Array = np.zeros(0, dtype=np.int64)
        self.eligible: Array = np.zeros(0, dtype=np.int64)
        self.models: list[str] = []
        self._model_id: dict[str, int] = {}
        #: the kid (`NodeView.kid`) of each row's view, valid while the ledger's `kid_epoch` is `kid_epoch`
        self.kid: Array = np.zeros(0, dtype=np.int64)
        self.kid_epoch = 0
        #: recent lists of names and their rows (`lookup`), most recent first; forgotten when a name gets or loses a row
        self._lists: list[tuple[list[str], Rows]] = []

    def __len__(self) -> int:
        return len(self._row)

    def names(self) -> list[str]:
        """The nodes that have a row."""
        return list(self._row)

    def rows(self, names: list[str]) -> list[int]:
        """The row of each of `names`, -1 for a node not in the index."""
        get = self._row.get
        return [get(name, -1) for name in names]

    def lookup(self, names: list[str]) -> Rows:
        """`rows` of `names` as a read-only array, remembered for the last few lists: a list equal to one of them
        (one comparison of the strings, no hashing) answers without a lookup per name."""
        size = len(names)
        for i, (known, rows) in enumerate(self._lists):
            if len(known) == size and known == names:
                if i:
                    self._lists.insert(0, self._lists.pop(i))
                return rows
        rows = np.array(self.rows(names), dtype=np.intp)
        rows.flags.writeable = False
        self._lists.insert(0, (list(names), rows))
        del self._lists[_LISTS:]
        return rows

    def remember(self, names: list[str], rows: Rows) -> None:
        """Remember `rows` (of this index, as `lookup` gave them) as the rows of `names`, for `lookup`: the filter's
        passing nodes, a sub-list of the list it looked up, which kube-scheduler's prioritize asks about next."""
        rows = np.array(rows, dtype=np.intp)
        if len(rows) != len(names):
            raise ValueError(f"{len(names)} names, {len(rows)} rows")
        rows.flags.writeable = False
        self._lists.insert(0, (list(names), rows))
        del self._lists[_LISTS:]

    def kids_at(self, rows: Rows) -> Array:
        """The kid of each of `rows`' views, -1 for row -1 (a node not in the index)."""
        return np.append(self.kid, -1)[rows]  # row -1: the appended kid

    def put(self, view: NodeView) -> None:
        """Set the row of `view.name` from its guaranteed view."""
        row = self._row.get(view.name)
        if row is None:
            row = self._spare.pop() if self._spare else self._new_row()
            self._row[view.name] = row
            self._lists.clear()
        self._fit(max(len(view.free_compute), len(view.inventory)))
        n = len(view.free_compute)
        self.free_compute[row, :n] = view.free_compute
        self.free_compute[row, n:] = _NONE
        self.free_memory[row, :n] = view.free_memory
        self.free_memory[row, n:] = _NONE
        self.total_memory[row, :n] = view.total_memory
        self.total_memory[row, n:] = _NO_TOTAL
        k = len(view.inventory)
        self.inventory_memory[row, :k] = [memory for _, memory in view.inventory]
        self.inventory_memory[row, k:] = _NONE
        self.inventory_count[row] = k
        self.cpu_free[row] = UNLIMITED if view.cpu_free is None else view.cpu_free
        self.memory_free[row] = UNLIMITED if view.memory_free is None else view.memory_free
        self.pods_free[row] = UNLIMITED if view.pods_free is None else view.pods_free
        model = self._model_id.get(view.model)
        if model is None:
            model = self._model_id[view.model] = len(self.models)
            self.models.append(view.model)
        self.model[row] = model
        self.eligible[row] = n
        self.kid[row] = view.kid

    def drop(self, name: str) -> None:
        row = self._row.pop(name, None)
        if row is None:
            return
        self._lists.clear()
        self.free_compute[row] = _NONE
        self.free_memory[row] = _NONE
        self.total_memory[row] = _NO_TOTAL
        self.inventory_memory[row] = _NONE
        self.inventory_count[row] = 0
        self.eligible[row] = 0
        self.kid[row] = -1
        self._spare.append(row)

    def codes(self, count: int, compute: int, memory_mib: int | None, cpu_milli: int, host_memory_mib: int) -> Array:
        """Per row: `FITS` when `count` slices of (`compute`, `memory_mib`; None = the whole GPU's) fit on distinct
        GPUs together with the host resources, else the first check that fails (the order of
        `Placer._local_failure`). Rows of no node hold garbage: look rows up with `rows`."""
        n = self._rows
        fc, fm, tm = self.free_compute[:n], self.free_memory[:n], self.total_memory[:n]
        if memory_mib is None:
            slice_ok = (fc >= compute) & (fm == tm) & (fm > 0)
            big_enough = self.inventory_count[:n]
        else:
            slice_ok = (fc >= compute) & (fm >= memory_mib)
            big_enough = np.count_nonzero(self.inventory_memory[:n] >= memory_mib, axis=1)
        cpu_ok = self.cpu_free[:n] >= cpu_milli
        memory_ok = self.memory_free[:n] >= host_memory_mib
        pod_ok = self.pods_free[:n] >= 1
        gpus_ok = np.count_nonzero(slice_ok, axis=1) >= count
        fits = cpu_ok & memory_ok & pod_ok & gpus_ok
        inventory_ok = (self.inventory_count[:n] > 0) & (big_enough >= count)
        return np.select(
            [fits, ~inventory_ok, ~cpu_ok, ~memory_ok, ~pod_ok], [FITS, INVENTORY, NO_CPU, NO_MEMORY, NO_POD_SLOT],
            default=SHORTAGE,
        )  # fmt: skip

    def _new_row(self) -> int:
        row = self._rows
        self._rows += 1
        if row >= len(self.cpu_free):
            grow = max(64, 2 * len(self.cpu_free))
            self._resize(grow, self.free_compute.shape[1])
        return row

    def _fit(self, columns: int) -> None:
        if columns > self.free_compute.shape[1]:
            self._resize(len(self.cpu_free), columns)

    def _resize(self, rows: int, columns: int) -> None:
        def grown(old: Array, fill: int) -> Array:
            new = np.full((rows, columns), fill, dtype=np.int64)
            new[: old.shape[0], : old.shape[1]] = old
            return new

        def longer(old: Array) -> Array:
            new = np.zeros(rows, dtype=np.int64)
            new[: len(old)] = old
            return new

        self.free_compute = grown(self.free_compute, _NONE)
        self.free_memory = grown(self.free_memory, _NONE)
        self.total_memory = grown(self.total_memory, _NO_TOTAL)
        self.inventory_memory = grown(self.inventory_memory, _NONE)
        self.inventory_count = longer(self.inventory_count)
        self.cpu_free = longer(self.cpu_free)
        self.memory_free = longer(self.memory_free)
        self.pods_free = longer(self.pods_free)
        self.model = longer(self.model)
        self.eligible = longer(self.eligible)
        self.kid = longer(self.kid)
