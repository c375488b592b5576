"""AdaCoMed: offline large-model feature caching and light collaborative training for medical diagnosis.

The distribution maps the repository's four parts under this package:
``adacomed.cache_schema`` (the on-disk contract), ``adacomed.extract`` (stage one),
``adacomed.train`` (stage two) and ``adacomed.pipelines`` (what composes them).
"""

__version__ = "0.1.0"
