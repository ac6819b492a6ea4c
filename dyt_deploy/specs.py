"""``TensorSpec``: one input or output of a model, as every layer describes it (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (ints, or names for dynamic dims), dtype, value range.

    ``low``/``high`` bound the values of integer inputs (token ids in ``[low, high)``).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    low: int = 0
    high: int = 2

    @property
    def dynamic_dims(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}

    def concrete_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with each named dim replaced by ``sizes[name]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)
