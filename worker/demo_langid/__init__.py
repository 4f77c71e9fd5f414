"""Language identification as model services: real pre-trained identifiers shipped in
their PyPI wheels (py3langid, langdetect, pycld2, cld3), each a service that reads texts
from a topic and publishes its prediction through ``worker.client``; the worker fuses
them. Needs the ``langid`` extra (``pip install 'fusion-worker[langid]'``).

- ``languages``: the fused label set and, in one table, each identifier's own codes.
- ``identifiers``: the identifiers, each giving a probability vector over the set.
- ``corpus``: the labelled sentences the evaluation uses (spaCy's per-language examples).
- ``service``: one identifier as a Kafka service.
- ``demo``: topics, services, the worker and a gateway; prints accuracies.
"""
