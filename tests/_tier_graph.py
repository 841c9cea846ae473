"""The graph the node-block degree tiers are tested on (PointConvolution and SE3Attention)."""

import numpy as np

# 14 receivers whose in-degrees are all different: with blocks of 2 and K = 12 every slot
# tier (12, 9, 6, 3) is used, and two receivers have no edge.
TIER_DEGREES = [12, 0, 1, 9, 2, 6, 3, 7, 0, 4, 5, 11, 8, 10]


def tier_graph():
    """Receiver ``r`` gets ``TIER_DEGREES[r]`` edges from the next nodes, in shuffled order
    (the graph contract does not sort edges); float64 positions."""
    n = len(TIER_DEGREES)
    receivers = np.repeat(np.arange(n), TIER_DEGREES).astype(np.int32)
    senders = np.concatenate([(r + 1 + np.arange(d)) % n for r, d in enumerate(TIER_DEGREES)]).astype(np.int32)
    perm = np.random.default_rng(5).permutation(len(senders))
    return {"positions": np.random.default_rng(6).normal(size=(n, 3)), "senders": senders[perm],
            "receivers": receivers[perm]}
