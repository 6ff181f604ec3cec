"""Fused kernels, each beside a plain-torch reference with the same signature."""


def triton_available() -> bool:
    """Whether Triton imports (the fused kernels' ``impl="auto"`` also needs CUDA tensors)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
