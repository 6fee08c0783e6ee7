"""Which unlabelled images to label next, chosen from an encoder's features or a classifier's probabilities;
no label is ever read.

The strategies the active-learning literature compares at small budgets:

- ``random``: a seeded uniform draw, what a lab without labels can do. (Today's stratified draw needs the
  labels it is meant to save, so it is the reference a study names, not a strategy a lab can run.)
- ``typiclust`` (Hacohen et al. 2022, the authors' ``typiclust.py``): k-means of the frozen encoder's
  features into as many clusters as there will be labels (at most 500); clusters with the fewest labels
  already, then the largest, each give their most typical image, the one whose 20 nearest neighbours in
  the cluster are closest. Cold-start picks that cover the data's modes with representative cells.
- ``margin``: the images a trained classifier is least sure of, the smallest gap between its two largest
  probabilities; the uncertainty rounds that take over once a first model exists (Doucet et al. 2024).

Features are L2-normalised first: self-supervised embeddings are compared by angle, and k-means on the unit
sphere then clusters by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanmae.errors import DataError

STRATEGIES = ("random", "typiclust", "margin")

# TypiClust's constants, as its authors set them.
MAX_CLUSTERS = 500
MIN_CLUSTER_SIZE = 5
NEIGHBOURS = 20
# Separates the selection's random numbers from the seed's other uses (label draws, augmentation).
SELECT_STREAM = 3 << 20


@dataclass(frozen=True)
class Pick:
    """One image to label: its index among the candidates, and why it was chosen (for whoever labels it)."""

    index: int
    reason: str


def _check_budget(budget: int, labelled: np.ndarray) -> None:
    left = int((~labelled).sum())
    if budget < 1 or budget > left:
        raise DataError(f"cannot choose {budget} images to label: {left} are not labelled yet")


def random_picks(labelled: np.ndarray, budget: int, seed: int) -> list[Pick]:
    """``budget`` unlabelled candidates drawn uniformly (``labelled``: a mask of those already labelled)."""
    _check_budget(budget, labelled)
    order = np.random.default_rng([seed, SELECT_STREAM]).permutation(np.flatnonzero(~labelled))
    return [Pick(int(i), "drawn at random") for i in order[:budget]]


def margin_picks(
    probabilities: np.ndarray, labelled: np.ndarray, budget: int, classes: list[str]
) -> list[Pick]:
    """The ``budget`` unlabelled candidates with the smallest gap between their two most probable classes."""
    _check_budget(budget, labelled)
    top2 = np.argsort(probabilities, axis=1)[:, -2:]
    rows = np.arange(len(probabilities))
    gap = probabilities[rows, top2[:, 1]] - probabilities[rows, top2[:, 0]]
    gap[labelled] = np.inf
    order = np.argsort(gap, kind="stable")[:budget]
    return [
        Pick(int(i), f"margin {gap[i]:.3f} between {classes[top2[i, 1]]} and {classes[top2[i, 0]]}")
        for i in order
    ]


def _unit(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def clusters_of(features: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each row (KMeans up to 50 clusters, MiniBatchKMeans above, as TypiClust does)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    kind = KMeans(n_clusters, random_state=seed, n_init="auto")
    if n_clusters > 50:
        kind = MiniBatchKMeans(n_clusters, batch_size=5000, random_state=seed, n_init="auto")
    return kind.fit_predict(features)


def typicality(features: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / the mean distance to each row's ``neighbours`` nearest other rows: high where the data is dense."""
    from sklearn.neighbors import NearestNeighbors

    distances, _ = NearestNeighbors(n_neighbors=neighbours + 1).fit(features).kneighbors(features)
    return 1.0 / (distances[:, 1:].mean(axis=1) + 1e-5)


def typiclust_picks(features: np.ndarray, labelled: np.ndarray, budget: int, seed: int) -> list[Pick]:
    """TypiClust's ``budget`` picks among the unlabelled rows of ``features`` (see the module docstring)."""
    _check_budget(budget, labelled)
    features = _unit(np.asarray(features, dtype=np.float64))
    n_clusters = min(int(labelled.sum()) + budget, MAX_CLUSTERS, len(features))
    cluster = clusters_of(features, n_clusters, seed)
    ids, sizes = np.unique(cluster, return_counts=True)
    covered = np.bincount(cluster[labelled], minlength=n_clusters)[ids]
    keep = sizes > MIN_CLUSTER_SIZE
    if not keep.any():
        keep = sizes > 1  # a pool too small for TypiClust's minimum: every cluster of two or more counts
    order = sorted(zip(covered[keep], -sizes[keep], ids[keep], strict=True))
    taken = labelled.copy()
    picks: list[Pick] = []
    while len(picks) < budget:
        before = len(picks)
        for _, negative_size, c in order:
            members = np.flatnonzero((cluster == c) & ~taken)
            if len(picks) == budget or len(members) < 2:
                continue
            score = typicality(features[members], min(NEIGHBOURS, len(members) // 2))
            best = int(members[score.argmax()])
            taken[best] = True
            picks.append(Pick(best, f"most typical of cluster {c} ({-negative_size} images)"))
        if len(picks) == before:  # every cluster is used up: the rest at random, said so
            rest = random_picks(taken, budget - len(picks), seed)
            picks += [Pick(p.index, "drawn at random (clusters used up)") for p in rest]
    return picks
