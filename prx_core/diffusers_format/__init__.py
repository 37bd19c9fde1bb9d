"""Export to, and import from, Hugging Face diffusers' ``PRXTransformer2DModel`` and PRX pipelines."""
