"""Training: configs, adaptive timestep sampling, the loop, the embedded VAE."""
