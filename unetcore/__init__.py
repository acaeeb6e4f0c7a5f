"""The shared U-Net core: model, geometry, training recipe and prediction (PyTorch only)."""
