"""k-nearest-neighbour classification on penultimate embeddings (the paper's Table 9).

If adversarial training shapes the feature space (as BML intends), a k-NN vote among *training*
embeddings should classify attacked test images about as well as the softmax head does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("cosine", "l2")


def knn_predict(
    index: torch.Tensor,
    index_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    k: int,
    metric: str = "cosine",
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Majority vote of the ``k`` nearest ``index`` rows for each query (ties go to the lowest class).

    Vectorised: distances of a chunk of queries to the whole index in one matmul, ``topk``, and a
    scatter-add of one-hot votes, so there is no loop over samples.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    if not 1 <= k <= index.shape[0]:
        raise ValueError(f"k must be in 1..{index.shape[0]} (the index size); got {k}")
    num_classes = num_classes or int(index_labels.max()) + 1
    index = index.float()
    if metric == "cosine":
        index = F.normalize(index, dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].float()
        # cosine: nearest = most similar, so rank by negative similarity
        dist = -(F.normalize(q, dim=1) @ index.T) if metric == "cosine" else torch.cdist(q, index)
        nearest = dist.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, index_labels[nearest], torch.ones_like(nearest, dtype=votes.dtype))
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
