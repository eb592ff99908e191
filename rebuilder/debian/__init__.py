"""The Debian ecosystem of the node: an APT repository watched, one source package rebuilt.

``watch`` (signed Release, then Packages/Sources) with ``indexes`` and ``indexproc`` (parsing in
a worker process), ``locate`` (where a job's buildinfo is), ``buildinfo`` (.buildinfo and .dsc),
``pins`` and ``environment`` (the pinned build dependencies, host or mmdebstrap), and ``build``
(the Debian build steps: fetch, dpkg-buildpackage in the sandbox, compare), and ``node``, which
registers all this as the ``debian`` ecosystem of ``rebuilder.ecosystem``. The generic stages
(queue, sandbox, compare, attest, db, publish, api) stay in ``rebuilder/``; the Debian grammar
is ``verifier.debian``'s.
"""
