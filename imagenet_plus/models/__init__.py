"""Models: the registry of families and known models (``registry``), diffusers loading (``diffusion``),
tiny random test models of the real architectures (``tiny``)."""
