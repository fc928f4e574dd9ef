"""Argument checks shared by every backend; each error names the op and the offending values.

The checks read only ``shape``, ``dtype`` and ``ndim``, so they serve NumPy and device arrays
alike. They run before any backend touches memory: a call that raises leaves ``dst`` unchanged.
"""

__all__ = ["check_addend", "check_scatter", "out_of_range"]


def check_addend(op, dst, src, name="src"):
    """Raise ValueError unless ``src`` (called ``name`` in the message) matches ``dst``.

    Matching means the same shape and the same dtype: the kernels neither broadcast nor cast.
    """
    if src.shape != dst.shape:
        raise ValueError(f"{op}: shape mismatch: dst {dst.shape} vs {name} {src.shape}")
    _check_dtype(op, dst, src, name)


def check_scatter(dst, index, src):
    """Raise unless ``scatter_add(dst, index, src)`` is well formed (index values aside).

    TypeError when ``index`` has no integer dtype; ValueError when ``dst`` is 0-d, ``index`` is
    not 1-D, ``src.shape != (len(index), *dst.shape[1:])`` or the dtypes of ``dst`` and ``src``
    differ. Index values are checked by the backend, which reports through ``out_of_range``.
    """
    if index.dtype.kind not in "iu":  # np.issubdtype's answer, at a tenth of its cost
        raise TypeError(f"scatter_add: index must have an integer dtype, got {index.dtype}")
    if index.ndim != 1:
        raise ValueError(f"scatter_add: index must be 1-D, got shape {index.shape}")
    if dst.ndim == 0:
        raise ValueError("scatter_add: dst must have at least 1 dimension, got shape ()")
    rows = (index.shape[0], *dst.shape[1:])
    if src.shape != rows:
        raise ValueError(
            f"scatter_add: shape mismatch: src {src.shape} vs (len(index), *dst.shape[1:]) "
            f"{rows} for dst {dst.shape}"
        )
    _check_dtype("scatter_add", dst, src, "src")


def _check_dtype(op, dst, src, name):
    if src.dtype != dst.dtype:
        raise ValueError(f"{op}: dtype mismatch: dst {dst.dtype} vs {name} {src.dtype}")


def out_of_range(value, position, rows):
    """The IndexError for index ``value`` at ``position``, outside a dst of ``rows`` rows."""
    return IndexError(
        f"scatter_add: index {value} at position {position} is out of range "
        f"for dst with {rows} rows"
    )
