"""Quantisation for the diffusion denoisers: SVDQuant (ours) and adapters for torchao / quanto / Nunchaku."""
