"""AnyDoor networks: ID extractors, detail extractor, denoiser wiring."""
