"""A planted-bias world: the proof that the audit finds the bias that is there and none that is not.

Nothing here audits real data. The package builds a small synthetic world where the truth is
known, so the whole audit (ingest → publish) can be run on it many times and its findings
checked against that truth (``bench/validity.py``):

* :mod:`~counterfactual_lab.validity.world`: image-text rows whose protected attribute
  (gender) is a visible, rendered feature (a coloured badge stripe at a fixed place) on a
  varied scene, written as an ordinary Parquet dataset;
* :mod:`counterfactual_lab.generation.planted`: :class:`PlantedWorldEditor`, generation method
  ``planted-world`` (a method like the others, in the production code): it changes exactly that feature and, like a real generator, leaves an
  artifact (blur, a colour cast and noise seeded per source and seed) on every image it
  outputs, reconstructions included;
* :mod:`~counterfactual_lab.validity.models`: two CLIP models under audit whose weights are
  *set*, not trained: a **fair** one whose zero-shot answers ignore the feature but react to
  the artifact, and a **biased** one whose probability of one label moves by a planted
  amount when the feature changes;
* :mod:`~counterfactual_lab.validity.audit_config`: the audit config that runs a world
  through the normal flow.
"""
