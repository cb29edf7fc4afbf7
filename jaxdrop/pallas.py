"""jaxdrop's dropout mask inside your own kernels (Pallas, or any code that sees one block).

`mask_words` runs outside the kernel; `keep_block` and `dropout_block` run inside it and
draw exactly `jaxdrop.dropout`'s mask on the kernel's block from integer operations alone.
Importing this module does not import Pallas.
"""

from ._tiles import dropout_block as dropout_block
from ._tiles import keep_block as keep_block
from ._tiles import mask_words as mask_words

__all__ = ["mask_words", "keep_block", "dropout_block"]
