"""Loading models: devices, safety checks, identity and hashes, diffusion pipelines, CLIP, processors, and the record of what each was loaded with."""
