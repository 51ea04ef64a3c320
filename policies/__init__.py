"""Builtin FedSeal verification policies, shipped as JSON data files.

Load one with ``attestation.load_builtin_policy(name)``; the schema is documented in
``policies/README.md``. This package holds no code: it exists so the files can be found
with :func:`importlib.resources.files` wherever FedSeal is installed.
"""
