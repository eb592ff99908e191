"""The demo network and the test-repository builder: development tools, not the services.

``python -m rqdemo`` (``make demo``) runs a whole rebuilder network on this machine
(``rqdemo.demo``, its broker in ``rqdemo.broker``); ``rqdemo.testrepo`` builds the small signed
APT repository the demo, the tests and the benchmarks rebuild. The package depends on
``verifier``, ``rebuilder`` and ``coordinator`` and none of them depends on it; like ``tests/``
it lives in the source tree only and is left out of the wheel an operator installs
(``[tool.setuptools.packages.find]`` in pyproject.toml).
"""
