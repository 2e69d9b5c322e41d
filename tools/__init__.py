"""What a developer runs beside the service: benchmarks and evaluations (``python -m tools.<name>``).

Not part of the installed package: these need a checkout (they start ``scripts/`` servers and load
generators). ``cpe bench`` and ``cpe evaluate --drift`` run them from the checkout the ``app`` package
was installed from.
"""
