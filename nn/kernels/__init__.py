"""Raw-array implementations of the fused ops (no autograd here: the Functions in ``nn/ops`` call these).

On the CPU each kernel is NumPy code that works through its input in
cache-sized blocks (``blocked.py``) and writes into preallocated buffers, so
a chain of a dozen elementwise steps streams each block through the L2
cache once instead of making a dozen trips to main memory with a dozen fresh
temporaries. The CUDA versions of the same kernels (CuPy) go beside them.
"""
