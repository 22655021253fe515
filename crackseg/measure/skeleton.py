"""The graph of a one-pixel-wide skeleton: branches as ordered pixel paths between junctions and ends.

scikit-image thins but has no skeleton graph; skan has one but brings numba and pandas for the
lines below, and measures a branch by summing pixel steps (the bias cracks.py avoids). The graph
is built from the skeleton's pixels alone (a few thousand in a crop of millions): no image-sized
array is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The 8 neighbours (dy, dx) in circular order: N, NE, E, SE, S, SW, W, NW.
RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
# Walk order: edge neighbours first, so that a walk passes through staircase corners.
_WALK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_BITS = (np.arange(256)[:, None] >> np.arange(8)) & 1
# Crossing number of each neighbourhood code: 0 -> 1 changes around the ring. 1: an end, 2: a path,
# >= 3: a junction. Unlike the neighbour count it is 2 on staircase corners.
_CROSSINGS = ((_BITS == 0) & (np.roll(_BITS, -1, axis=1) == 1)).sum(axis=1).astype(np.uint8)
_POWERS = 1 << np.arange(8)


@dataclass
class Branch:
    """One edge of the skeleton graph."""

    pixels: np.ndarray  # (N, 2) int (y, x), in order along the branch
    nodes: tuple[int | None, int | None]  # the junction at each end; None: a free end (a tip)
    closed: bool = False  # a ring without junctions


@dataclass
class SkeletonGraph:
    branches: list[Branch]
    node_centres: np.ndarray  # (J, 2) float (x, y) of each junction, a cluster of pixels
    node_pixels: np.ndarray  # (K, 2) int (y, x) of the junctions' pixels
    node_ids: np.ndarray  # (K,) the junction of each of them

    def polyline(self, branch: Branch) -> np.ndarray:
        """(N, 2) float32 (x, y): the branch's pixels, from and to the centres of its junctions."""
        parts = [branch.pixels[:, ::-1].astype(np.float32)]
        if branch.nodes[0] is not None:
            parts.insert(0, self.node_centres[branch.nodes[0]][None])
        if branch.nodes[1] is not None:
            parts.append(self.node_centres[branch.nodes[1]][None])
        return np.concatenate(parts).astype(np.float32)


def crossings_at(skeleton: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Crossing numbers of the pixels (ys, xs), none of them on the array's border."""
    code = sum(skeleton[ys + dy, xs + dx].astype(np.int64) << bit for bit, (dy, dx) in enumerate(RING))
    return _CROSSINGS[code] if len(ys) else np.zeros(0, np.uint8)


def skeleton_graph(skeleton: np.ndarray) -> SkeletonGraph:
    """Split a skeleton (bool, no pixel on the array's border) into junctions and branches.

    Junction pixels (crossing number >= 3) and their skeleton neighbours form one junction per
    8-connected cluster; what is left are simple paths, each walked from one end to the other.
    """
    ys, xs = np.nonzero(skeleton)
    neighbours = _neighbours(ys, xs, skeleton.shape[1])
    present = neighbours >= 0
    junction = _CROSSINGS[present @ _POWERS] >= 3
    near = junction | (present & junction[neighbours]).any(axis=1)
    members = np.flatnonzero(near)
    node_of = _clusters(members, neighbours)
    n_nodes = int(node_of.max(initial=-1)) + 1
    ids = node_of[members]
    counts = np.maximum(np.bincount(ids, minlength=n_nodes), 1)
    centres = np.stack([np.bincount(ids, xs[members], n_nodes), np.bincount(ids, ys[members], n_nodes)], 1)

    on_path = present & (node_of[neighbours] < 0)
    path_neighbours = np.where(on_path, neighbours, -1)
    is_end = (node_of < 0) & (_CROSSINGS[on_path @ _POWERS] <= 1)
    walk = path_neighbours[:, _WALK_ORDER].tolist()
    visited = bytearray(near.astype(np.uint8).tobytes())  # a Python buffer: the walk reads it per pixel
    branches = []
    for start in np.flatnonzero(is_end).tolist() + np.flatnonzero(node_of < 0).tolist():
        if visited[start]:
            continue
        order = _walk(start, walk, visited)
        touching = [sorted(set(node_of[neighbours[i][present[i]]].tolist()) - {-1}) for i in (order[0], order[-1])]
        if len(order) == 1:  # one pixel between two junctions, or between a junction and a tip
            nodes = (touching[0] + [None, None])[:2]
        else:
            nodes = [t[0] if t else None for t in touching]
        branches.append(Branch(np.stack([ys[order], xs[order]], 1), (nodes[0], nodes[1]), not is_end[order[0]]))
    return SkeletonGraph(branches, (centres / counts[:, None]).astype(np.float32),
                         np.stack([ys[members], xs[members]], 1), ids)


def _neighbours(ys: np.ndarray, xs: np.ndarray, width: int) -> np.ndarray:
    """(N, 8) index of each pixel's neighbour in RING order, -1 where there is none."""
    linear = ys.astype(np.int64) * width + xs  # sorted: np.nonzero is row-major
    result = np.full((len(ys), 8), -1, np.int64)
    if not len(ys):
        return result
    for k, (dy, dx) in enumerate(RING):
        target = linear + dy * width + dx
        found = np.minimum(np.searchsorted(linear, target), len(linear) - 1)
        result[:, k] = np.where(linear[found] == target, found, -1)
    return result


def _clusters(members: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Cluster number (0, 1, ...) of each member pixel by adjacency; -1 for the other pixels."""
    parent = {i: i for i in members.tolist()}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in parent:
        for j in neighbours[i].tolist():
            if j in parent:
                parent[root(j)] = root(i)
    result = np.full(len(neighbours), -1, np.int64)
    roots = {}
    for i in parent:
        result[i] = roots.setdefault(root(i), len(roots))
    return result


def _walk(start: int, walk: list[list[int]], visited: bytearray) -> list[int]:
    """The pixels of a simple path in order from ``start``, marking them visited."""
    order = [start]
    visited[start] = 1
    current = start
    while True:
        for candidate in walk[current]:
            if candidate >= 0 and not visited[candidate]:
                break
        else:
            return order
        visited[candidate] = 1
        order.append(candidate)
        current = candidate
