"""Every node's score for one (policy, pod shape), kept current from the ledger's change log.

`Placer.best` over the whole pool asks for the top-scoring node, ties to the lowest rank,
once per pod. Scoring every node state for every pod costs O(nodes) per pod even when
the scores are remembered; between two pods of the same shape only the nodes the ledger
logged as changed (`Ledger.changes_since`) can score differently, so a board rescores
those and keeps, per score, a heap of (rank, node) with stale entries dropped lazily.
Only for policies whose score of a node depends on that node alone (no `rescore`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable


class ScoreBoard:
    """Scores of the nodes where the shape fits (absent: it does not); `best` is the top, lowest rank."""

    __slots__ = ("_heaps", "_rank", "_top", "mark", "scores")

    def __init__(self, rank: Callable[[str], int], mark: int) -> None:
        self._rank = rank
        #: the ledger's `change_mark()` these scores are current at
        self.mark = mark
        self.scores: dict[str, int] = {}
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._top: list[int] = []  # the scores with a heap, descending (at most 101 with 0..100 scores)

    def update(self, node: str, score: int | None) -> None:
        """`node` now scores `score` (None: the shape does not fit there, or the node is gone)."""
        old = self.scores.get(node)
        if old == score:
            return
        if score is None:
            del self.scores[node]
            return
        self.scores[node] = score
        heap = self._heaps.get(score)
        if heap is None:
            heap = self._heaps[score] = []
            self._top.append(score)
            self._top.sort(reverse=True)
        heapq.heappush(heap, (self._rank(node), node))
        if len(heap) > 2 * len(self.scores) + 64:  # mostly stale entries: rebuild
            fresh = list({e for e in heap if self.scores.get(e[1]) == score})
            heapq.heapify(fresh)
            self._heaps[score] = fresh

    def update_all(self, nodes: Iterable[str], score_of: Callable[[str], int | None]) -> None:
        for node in nodes:
            self.update(node, score_of(node))

    def best(self) -> str | None:
        """The node of the top score, lowest (rank, name) among them; None when the shape fits nowhere."""
        scores = self.scores
        for score in self._top:
            heap = self._heaps[score]
            while heap:
                node = heap[0][1]
                if scores.get(node) == score:
                    return node
                heapq.heappop(heap)
        return None
