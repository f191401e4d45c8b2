"""The statistics of certification, shared by the server and the offline verifier.

Pure functions on counts, with no server, backend or transport in sight:

- ``bounds``: the exact Clopper-Pearson bounds on a binomial proportion;
- ``families``: the noise families (a registry, one module each): the norm each certifies,
  its scale, how a lower bound on p_A becomes a radius, and how a target radius becomes the
  threshold p_A must exceed; plus how the family's noise is drawn;
- ``procedures``: the certification procedures (a registry, one module each): PREDICT,
  fixed-n CERTIFY, the target-radius test and the anytime certificate. Each validates its
  options, plans its looks, decides a look, and so recomputes an answer from a record.

The server (``smoothserve``) samples and calls these; ``smoothserve-verify`` (this
distribution's ``smoothcert.verify``) calls the same entries on a saved record, so the two
cannot drift apart.
"""
