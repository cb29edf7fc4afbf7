"""Dot-product attention with dropout on the attention weights, one module per idea.

- `_api`: `dot_product_attention`, its argument checks and the choice of implementation;
- `_geometry`: which logits take part, the masking values, the grouped-query layout;
- `_reference`: ``"xla"``, the ``(B, N, T, S)`` weights materialised and `jaxdrop.dropout`
  applied to them;
- `_chunked`: ``"chunked"``, blocks in `lax` loops with an online softmax, no ``(T, S)``
  array forward or backward;
- `_pallas`: ``"pallas"``, the same algorithm as Pallas kernels for GPU and TPU.

Every implementation draws its dropout mask from `_mask` on the global index of each weight,
so all give the mask ``jaxdrop.dropout`` draws on the whole ``(B, N, T, S)`` weights.
"""

from ._api import IMPLEMENTATIONS as IMPLEMENTATIONS
from ._api import dot_product_attention as dot_product_attention
from ._chunked import varying_axes as varying_axes
