"""On-demand speed benchmarks (not part of ``make test``).

``agkd_bml`` is imported first so that its CPU allocator default (huge pages for large tensors) applies
here as it does in the ``agkd-bml`` command.
"""

import agkd_bml  # noqa: F401
