"""Post-training sparsity: magnitude, Wanda and SparseGPT, unstructured or N:M (`compress/sparsify.py`)."""
