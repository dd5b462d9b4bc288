"""Where a method's micro-batches come from: offline preference pairs, or online rollouts of the policy.

Every source has the same small interface (`BatchSource`), which is all the loop knows of it.
"""

from .base import BatchSource

__all__ = ["BatchSource"]
