"""Counterfactual image generation: one editor module per method behind one interface
(:mod:`.editor`), the batch runner that fills the content-addressed image store (:mod:`.batch`),
adaptive rounds of seeds (:mod:`.rounds`), text-to-image counterfactual sets
(:mod:`.text2image_sets`) and the candidate table the judge reads (:mod:`.candidates`).

Which editor a method uses is a fact of its row in :data:`counterfactual_lab.config.methods.METHODS`.
Nothing is imported here: the editors bring torch and diffusers, which the planning and the
CLI's start-up do without.
"""
